"""ImageReward (Xu et al., 2023) as a scorer, loading the official files.

The network (`semdpo_core.models.image_reward_net`) is BLIP's ViT image encoder, a BERT text encoder
that cross-attends to the image tokens, and an MLP head. The official `ImageReward.pt` (a plain
state dict in BLIP's key names) and `med_config.json` load through a key mapping onto
`BlipVisionModel` and `BlipTextModel`; the tokenizer is BERT's (`bert-base-uncased`) with the two special tokens BLIP
adds. The image is resized and centre-cropped exactly as the original preprocessing does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from semdpo_core.models.image_reward_net import (  # noqa: F401 (to_official_key: re-exported)
    CHECKPOINT,
    MED_CONFIG,
    ImageRewardModel,
    add_blip_tokens,
    to_official_key,
)
from semdpo_core.models.loading import (
    ModelNotFound,
    inference_dtype,
    model_file,
    pretrained,
    resolve,
)
from semdpo_core.scorers.base import CLIP_MEAN, CLIP_STD

MAX_PROMPT_TOKENS = 35  # the original pads/truncates prompts to 35 tokens


def blip_tokenizer(ref: str) -> Any:
    """BERT's tokenizer with the two special tokens BLIP adds ([DEC] as bos, [ENC])."""
    from transformers import BertTokenizer

    return add_blip_tokens(pretrained(BertTokenizer, ref))


def preprocess(size: int) -> Any:
    """The original's image transform: bicubic resize of the short side, centre crop, CLIP normalisation."""
    from torchvision import transforms as T

    return T.Compose([
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
        T.Lambda(lambda image: image.convert("RGB")), T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD),
    ])


class ImageRewardScorer:
    """ImageReward scores of images against prompts (higher is better, about N(0, 1) on its data)."""

    def __init__(self, model: ImageRewardModel, tokenizer: Any, device: torch.device):
        self.model = model.to(device, inference_dtype(device)).eval()
        self.model.head.float()  # the original runs its head on float features
        self.tokenizer = tokenizer
        self.transform = preprocess(model.vision.config.image_size)
        self.device = device

    @classmethod
    def load(cls, model_ref: str, tokenizer_ref: str | None, device: torch.device) -> ImageRewardScorer:
        """The official `ImageReward.pt` + `med_config.json` and BERT's tokenizer with BLIP's two tokens."""
        model_dir = Path(resolve(model_ref))
        if tokenizer_ref is None:  # a `tokenizer/` folder beside the checkpoint, else BERT's from the HF cache
            tokenizer_ref = str(model_dir / "tokenizer") if (model_dir / "tokenizer").is_dir() else "bert-base-uncased"
        model = ImageRewardModel.from_official(model_file(model_ref, CHECKPOINT), model_file(model_ref, MED_CONFIG))
        tokenizer = blip_tokenizer(tokenizer_ref)
        if len(tokenizer) != model.text.config.vocab_size:  # BERT's 30522 + 2 for the official model
            raise ModelNotFound(
                f"tokenizer {tokenizer_ref!r} has {len(tokenizer)} tokens with BLIP's two added, but "
                f"{model_ref!r} has {model.text.config.vocab_size}: give the BERT tokenizer the model was trained "
                "with (bert-base-uncased for the official ImageReward) as the scorer's `processor`"
            )
        return cls(model, tokenizer, device)

    @torch.no_grad()
    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        text = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=MAX_PROMPT_TOKENS, return_tensors="pt"
        )
        pixels = torch.stack([self.transform(image) for image in images])
        dtype = next(self.model.parameters()).dtype
        rewards = self.model(
            pixels.to(self.device, dtype), text["input_ids"].to(self.device), text["attention_mask"].to(self.device)
        )
        return rewards.float().cpu().tolist()
