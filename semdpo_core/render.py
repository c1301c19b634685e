"""Rendering: every prompt through a Stable Diffusion pipeline (DDIM), one seed per image, batched."""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from semdpo_core.batching import device_memory, map_in_batches
from semdpo_core.scorers import encode_png

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
        generators = [torch.Generator(generator_device).manual_seed(s) for s in seeds[batch]]
        out = pipe(
            prompts[batch],
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            height=height,
            width=width,
            generator=generators,
        )
        return [encoder.submit(encode_png, image) for image in out.images]  # while the next batch renders

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="png") as encoder:
        pending = map_in_batches(render_batch, len(prompts), batch_size, desc=desc, unit="image",
                                 memory=device_memory(pipe.device))
        images = [f.result() for f in pending]
    log.info("rendered %d images (%dx%d, %d DDIM steps)", len(images), width, height, num_inference_steps)
    return images
