"""HPSv2.1 (Wu et al., 2023) and any other open_clip model, scored as the originals score.

HPSv2.1 is open_clip's ViT-H-14 with the fine-tuned checkpoint `HPS_v2.1_compressed.pt` (a
dict holding `state_dict`); its score is the cosine of the normalised image and text features,
no logit scale, with open_clip's tokenizer and HPS's own validation transform (the longest side
resized to the model's size and the image padded black to a square, not centre-cropped). The `open_clip` kind
is the same rule for any open_clip architecture and weights (a pretrained tag or a file): a
CLIP score from an open_clip model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from semdpo_core.models.loading import (
    ModelNotFound,
    inference_dtype,
    model_file,
    resolve,
)
from semdpo_core.scorers.base import CLIP_MEAN, CLIP_STD

HPS_CHECKPOINT = "HPS_v2.1_compressed.pt"
HPS_ARCHITECTURE = "ViT-H-14"


def hps_transform(size: int) -> Any:
    """HPSv2's validation transform: to tensor, longest side to `size` (bicubic), centred black padding."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    def transform(image: Image.Image) -> torch.Tensor:
        pixels = F.to_tensor(image.convert("RGB"))
        height, width = pixels.shape[1:]
        scale = size / float(max(height, width))
        if scale != 1.0:
            new_h, new_w = round(height * scale), round(width * scale)
            pixels = F.resize(pixels, [new_h, new_w], InterpolationMode.BICUBIC)
            pad_h, pad_w = size - new_h, size - new_w
            pixels = F.pad(pixels, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
        return F.normalize(pixels, CLIP_MEAN, CLIP_STD)

    return transform


def register_configs(model_dir: Path) -> None:
    """Make open_clip model configs (`NAME.json`) kept beside a checkpoint known to open_clip."""
    import open_clip

    if model_dir.is_dir() and any(model_dir.glob("*.json")):
        open_clip.add_model_config(model_dir)


def load_open_clip(architecture: str, weights: str | None) -> tuple[Any, Any, Any]:
    """(model, validation transform, tokenizer) for an open_clip architecture and weights."""
    import open_clip

    try:
        model, _, transform = open_clip.create_model_and_transforms(architecture, pretrained=weights)
    except RuntimeError as e:
        raise ModelNotFound(f"cannot build open_clip model {architecture!r} with weights {weights!r}: {e}") from None
    return model.eval(), transform, open_clip.get_tokenizer(architecture)


def visual_size(model: Any) -> int:
    """The square input size of an open_clip model's image tower."""
    size = model.visual.image_size
    return size[0] if isinstance(size, (tuple, list)) else size


class OpenClipScorer:
    """Cosine of normalised open_clip image and text features (HPSv2.1's score)."""

    def __init__(self, model: Any, transform: Any, tokenizer: Any, device: torch.device):
        self.model = model.to(device, inference_dtype(device)).eval()
        self.transform, self.tokenizer, self.device = transform, tokenizer, device

    @classmethod
    def load(cls, architecture: str, weights: str | None, device: torch.device) -> OpenClipScorer:
        """An open_clip architecture with its weights (a pretrained tag or a file) and its own transform."""
        return cls(*load_open_clip(architecture, weights), device)

    @classmethod
    def hpsv2(cls, model_ref: str, architecture: str | None, device: torch.device) -> OpenClipScorer:
        """HPSv2.1: the official checkpoint file (a path, a folder, or `xswu/HPSv2` in the HF cache)."""
        checkpoint = model_file(model_ref, HPS_CHECKPOINT)
        register_configs(Path(resolve(model_ref)))
        model, _, tokenizer = load_open_clip(architecture or HPS_ARCHITECTURE, str(checkpoint))
        return cls(model, hps_transform(visual_size(model)), tokenizer, device)

    @torch.no_grad()
    def embed(self, images: list[Image.Image] | None = None, texts: list[str] | None = None) -> torch.Tensor:
        """L2-normalised image features (images given) or text features (texts given), float32."""
        if images is not None:
            pixels = torch.stack([self.transform(image) for image in images])
            features = self.model.encode_image(pixels.to(self.device, next(self.model.parameters()).dtype))
        else:
            features = self.model.encode_text(self.tokenizer(texts).to(self.device))
        return torch.nn.functional.normalize(features.float(), dim=-1)

    @torch.no_grad()
    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        return (self.embed(images=images) * self.embed(texts=prompts)).sum(-1).cpu().tolist()
