"""Rendering: every prompt through a Stable Diffusion pipeline (DDIM) or the synthetic world's
renderer, one seed per image, batched."""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from semdpo_core.batching import device_memory, map_in_batches
from semdpo_core.scorers import encode_png
from semdpo_core.world.render import WorldRenderer

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
    float rounding), so batches are sized to the GPU's free memory (semdpo_core.batching)."""
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
