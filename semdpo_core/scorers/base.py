"""What every scorer shares: the interface, the image normalisation of the CLIP family, PNG bytes."""

from __future__ import annotations

import io
from typing import Protocol

import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # the image normalisation BLIP, ImageReward and HPS share
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Scorer(Protocol):
    device: torch.device

    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]: ...


def decode_png(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
