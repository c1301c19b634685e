"""Rendering: every prompt through a Stable Diffusion pipeline (DDIM), one seed per image, batched."""

from __future__ import annotations

import logging
from typing import Any

import torch
from tqdm.auto import tqdm

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
    """PNG bytes of one image per (prompt, seed); the same seed always gives the same image."""
    images: list[bytes] = []
    generator_device = pipe.device if pipe.device.type == "cuda" else "cpu"
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch"):
        batch_seeds = seeds[start : start + batch_size]
        generators = [torch.Generator(generator_device).manual_seed(s) for s in batch_seeds]
        out = pipe(
            prompts[start : start + batch_size],
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            height=height,
            width=width,
            generator=generators,
        )
        images.extend(encode_png(image) for image in out.images)
    log.info("rendered %d images (%dx%d, %d DDIM steps)", len(images), width, height, num_inference_steps)
    return images
