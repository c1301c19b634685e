"""BLIP-ITM (Li et al., 2022): the probability that an image matches a text, from BLIP's
image-text matching head, on transformers' BlipForImageTextRetrieval (e.g. the official
Salesforce/blip-itm-large-coco). Preprocessed as BLIP's own evaluation: a bicubic resize to the
model's square size, CLIP normalisation; prompts padded/truncated to 35 tokens as BLIP does."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from semdpo_core.models.loading import inference_dtype, pretrained
from semdpo_core.scorers.base import CLIP_MEAN, CLIP_STD
from semdpo_core.scorers.image_reward import MAX_PROMPT_TOKENS


def blip_transform(size: int) -> Any:
    from torchvision import transforms as T

    return T.Compose([
        T.Lambda(lambda image: image.convert("RGB")), T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC),
        T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD),
    ])


class BlipItmScorer:
    """P(match) from BLIP's ITM head: softmax of its two logits, the "match" one."""

    def __init__(self, model: Any, tokenizer: Any, device: torch.device):
        self.model = model.to(device, inference_dtype(device)).eval()
        self.tokenizer = tokenizer
        self.transform = blip_transform(model.config.vision_config.image_size)
        self.device = device

    @classmethod
    def load(cls, model_ref: str, tokenizer_ref: str | None, device: torch.device) -> BlipItmScorer:
        """A BlipForImageTextRetrieval and its tokenizer from ids or local paths."""
        from transformers import AutoTokenizer, BlipForImageTextRetrieval

        model = pretrained(BlipForImageTextRetrieval, model_ref, dtype=inference_dtype(device))
        return cls(model, pretrained(AutoTokenizer, tokenizer_ref or model_ref), device)

    @torch.no_grad()
    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        pixels = torch.stack([self.transform(image) for image in images]).to(self.device, self.model.dtype)
        text = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=MAX_PROMPT_TOKENS,
                              return_tensors="pt")
        image_embeds = self.model.vision_model(pixel_values=pixels).last_hidden_state
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
        hidden = self.model.text_encoder(
            input_ids=text["input_ids"].to(self.device), attention_mask=text["attention_mask"].to(self.device),
            encoder_hidden_states=image_embeds, encoder_attention_mask=image_mask,
        ).last_hidden_state
        logits = self.model.itm_head(hidden[:, 0, :]).float()
        return logits.softmax(dim=-1)[:, 1].cpu().tolist()
