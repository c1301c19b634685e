"""CLIP score and PickScore on a transformers CLIPModel.

- clip:      cosine of the L2-normalised image and text embeddings, no x100 (about 0.26 for real
             CLIP on good images, the convention of the paper's tables).
- pickscore: PickScore's rule (Kirstain et al., 2023): logit_scale * cosine, on the PickScore_v1
             weights with the CLIP-H processor.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from semdpo_core.models.loading import inference_dtype, pretrained


class ClipScorer:
    """CLIP-family scorer; `scale_by_logit` gives PickScore's logit_scale * cosine."""

    def __init__(self, model: Any, processor: Any, device: torch.device, scale_by_logit: bool):
        self.model = model.to(device, inference_dtype(device)).eval()
        self.processor = processor
        self.device = device
        self.scale_by_logit = scale_by_logit

    @classmethod
    def load(cls, model_ref: str, processor_ref: str | None, device: torch.device, scale_by_logit: bool) -> ClipScorer:
        """A CLIPModel and its processor from ids or local paths (`processor_ref` None: the model's)."""
        from transformers import AutoProcessor, CLIPModel

        model = pretrained(CLIPModel, model_ref, dtype=inference_dtype(device))
        return cls(model, pretrained(AutoProcessor, processor_ref or model_ref), device, scale_by_logit)

    @torch.no_grad()
    def embed(self, images: list[Image.Image] | None = None, texts: list[str] | None = None) -> torch.Tensor:
        """L2-normalised image embeddings (images given) or text embeddings (texts given), float32."""
        if images is not None:
            pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
            out = self.model.get_image_features(pixel_values=pixels.to(self.device, self.model.dtype))
        else:
            tokens = self.processor(text=texts, return_tensors="pt", padding=True, truncation=True, max_length=77)
            out = self.model.get_text_features(
                input_ids=tokens["input_ids"].to(self.device), attention_mask=tokens["attention_mask"].to(self.device)
            )
        # transformers 5 returns an output object
        features = out if isinstance(out, torch.Tensor) else out.pooler_output
        return torch.nn.functional.normalize(features.float(), dim=-1)

    @torch.no_grad()
    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        cosine = (self.embed(images=images) * self.embed(texts=prompts)).sum(-1)
        if self.scale_by_logit:
            cosine = self.model.logit_scale.exp().float() * cosine
        return cosine.cpu().tolist()
