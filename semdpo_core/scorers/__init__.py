"""Scorers of images against prompts, behind one small interface: (images, prompts) -> scores.

The image is always scored against the ORIGINAL user prompt, never the rewrite. Each kind loads
the official weights from a local path or the local Hugging Face cache, and each has a tiny
random-weight build (`tiny:NAME`) for `configs/tiny.yaml`:

| kind         | model                                   | score                                  |
|--------------|-----------------------------------------|----------------------------------------|
| clip         | transformers CLIPModel                  | cosine of normalised embeddings        |
| pickscore    | PickScore_v1 + CLIP-H processor         | logit_scale * cosine                   |
| image_reward | ImageReward.pt + med_config.json        | normalised MLP reward on BLIP features |
| hpsv2        | HPS_v2.1_compressed.pt on ViT-H-14      | cosine of normalised open_clip features|
| open_clip    | any open_clip architecture and weights  | cosine of normalised features          |
| blip_itm     | BlipForImageTextRetrieval (ITM head)    | P(image matches text)                  |
| world        | world:alignment, world:aesthetic, world:pick | the world's pixel rules (world/pixel_scorers) |
"""

from __future__ import annotations

import torch

from semdpo_core.pipeline.config import ScorerConfig
from semdpo_core.scorers.base import CLIP_MEAN, CLIP_STD, Scorer, decode_png, encode_png  # noqa: F401 (the package's face)
from semdpo_core.scorers.blip_itm import BlipItmScorer
from semdpo_core.scorers.clip import ClipScorer
from semdpo_core.scorers.hps import OpenClipScorer
from semdpo_core.scorers.image_reward import ImageRewardScorer
from semdpo_core.world.pixel_scorers import AlignmentScorer, PreferenceScorer


def load_scorer(config: ScorerConfig, device: torch.device) -> Scorer:
    """The scorer a config names, on `device`."""
    if config.kind == "world":
        return world_scorer(config.model)
    if config.kind in ("clip", "pickscore"):
        return ClipScorer.load(config.model, config.processor, device, scale_by_logit=config.kind == "pickscore")
    if config.kind == "image_reward":
        return ImageRewardScorer.load(config.model, config.processor, device)
    if config.kind == "blip_itm":
        return BlipItmScorer.load(config.model, config.processor, device)
    if config.kind == "hpsv2":
        return OpenClipScorer.hpsv2(config.model, config.architecture, device)
    if config.architecture is None:
        raise ValueError("an open_clip scorer needs `architecture` (an open_clip model name such as ViT-L-14)")
    return OpenClipScorer.load(config.architecture, config.model, device)


WORLD_SCORERS = ("world:alignment", "world:aesthetic", "world:pick")


def world_scorer(model: str) -> Scorer:
    """The synthetic world's alignment scorer or one of its two preference tastes (CPU, no weights)."""
    if model not in WORLD_SCORERS:
        raise ValueError(f"unknown world scorer {model!r}; choose one of {', '.join(WORLD_SCORERS)}")
    return AlignmentScorer() if model == "world:alignment" else PreferenceScorer(model.removeprefix("world:"))
