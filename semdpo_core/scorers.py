"""Scorers of images against prompts, behind one small interface: (images, prompts) -> scores.

The image is always scored against the ORIGINAL user prompt, never the rewrite.
- clip:      cosine of L2-normalised CLIP image and text embeddings (values near 0.26 for real CLIP).
- pickscore: PickScore's rule, logit_scale * cosine, on a transformers CLIPModel.
"""

from __future__ import annotations

import io
from typing import Protocol

import torch
from PIL import Image

from semdpo_core.models import inference_dtype, pretrained


class Scorer(Protocol):
    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]: ...


class ClipScorer:
    """CLIP-family scorer; `scale_by_logit` gives PickScore's logit_scale * cosine."""

    def __init__(self, model_ref: str, processor_ref: str | None, device: torch.device, scale_by_logit: bool):
        from transformers import AutoProcessor, CLIPModel

        self.model = pretrained(CLIPModel, model_ref, dtype=inference_dtype(device)).to(device).eval()
        self.processor = pretrained(AutoProcessor, processor_ref or model_ref)
        self.device = device
        self.scale_by_logit = scale_by_logit

    @torch.no_grad()
    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        inputs = self.processor(
            text=prompts, images=images, return_tensors="pt", padding=True, truncation=True, max_length=77
        )
        dtype = self.model.dtype
        image_embeds = self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device, dtype)).pooler_output
        text_embeds = self.model.get_text_features(
            input_ids=inputs["input_ids"].to(self.device), attention_mask=inputs["attention_mask"].to(self.device)
        ).pooler_output
        image_embeds = torch.nn.functional.normalize(image_embeds.float(), dim=-1)
        text_embeds = torch.nn.functional.normalize(text_embeds.float(), dim=-1)
        cosine = (image_embeds * text_embeds).sum(-1)
        if self.scale_by_logit:
            cosine = self.model.logit_scale.exp().float() * cosine
        return cosine.cpu().tolist()


def load_scorer(kind: str, model: str, processor: str | None, device: torch.device) -> Scorer:
    """The scorer for a config's `kind` and model reference."""
    if kind in ("clip", "pickscore"):
        return ClipScorer(model, processor, device, scale_by_logit=kind == "pickscore")
    raise NotImplementedError(
        f"scorer kind {kind!r} is not available yet: ImageReward and HPSv2.1 need the compatibility "
        "work of the scorer issue. Use kind 'pickscore' or 'clip' for now."
    )


def decode_png(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
