"""The render stage: every prompt through a Stable Diffusion pipeline (DDIM) or the synthetic world's
renderer, one seed per image, batched."""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import torch

from semdpo_core.models.batching import device_memory, map_in_batches
from semdpo_core.models.inference import loaded
from semdpo_core.models.loading import load_diffusion
from semdpo_core.pipeline.schemas import CANDIDATES
from semdpo_core.pipeline.stage_context import StageContext
from semdpo_core.scorers.base import encode_png
from semdpo_core.world.renderer import WorldRenderer

log = logging.getLogger("semdpo.render")


def render_images(
    pipe: Any,
    prompts: list[str],
    seeds: list[int],
    *,
    num_inference_steps: int,
    guidance_scale: float,
    height: int,
    width: int,
    batch_size: int,
    desc: str = "render",
) -> list[bytes]:
    """PNG bytes of one image per (prompt, seed); a seed gives the same image in any batch (up to
    float rounding), so batches are sized to the GPU's free memory (semdpo_core.models.batching)."""
    generator_device = pipe.device if pipe.device.type == "cuda" else "cpu"

    def render_batch(batch: slice) -> list[Future[bytes]]:
        if isinstance(pipe, WorldRenderer):  # the world draws from the seed itself; steps and guidance mean nothing
            images = pipe.render(prompts[batch], seeds[batch], height, width)
        else:
            generators = [torch.Generator(generator_device).manual_seed(s) for s in seeds[batch]]
            images = pipe(
                prompts[batch],
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                height=height,
                width=width,
                generator=generators,
            ).images
        return [encoder.submit(encode_png, image) for image in images]  # while the next batch renders

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="png") as encoder:
        pending = map_in_batches(render_batch, len(prompts), batch_size, desc=desc, unit="image",
                                 memory=device_memory(pipe.device))
        images = [f.result() for f in pending]
    how = "the world's renderer" if isinstance(pipe, WorldRenderer) else f"{num_inference_steps} DDIM steps"
    log.info("rendered %d images (%dx%d, %s)", len(images), width, height, how)
    return images


def render_shard(ctx: StageContext, shard: int) -> pa.Table:
    """One image per candidate of candidates part `shard`, with the candidate's seed."""
    s = ctx.settings
    table = ctx.store.read_part(ctx.inputs["candidates"], shard, CANDIDATES)
    pipe = loaded(load_diffusion, s.model, ctx.device, ctx.runtime.compile_unet)
    images = render_images(
        pipe, table.column("rewrite").to_pylist(), table.column("seed").to_pylist(),
        num_inference_steps=s.num_inference_steps, guidance_scale=s.guidance_scale,
        height=s.height, width=s.width, batch_size=s.batch_size, desc=f"render shard {shard}",
    )
    return pa.table(
        {"candidate_id": table.column("candidate_id"), "prompt_id": table.column("prompt_id"),
         "seed": table.column("seed"), "image": pa.array(images, pa.binary())}
    )
