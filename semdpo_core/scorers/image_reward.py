"""ImageReward (Xu et al., 2023) on transformers' own BLIP modules, loading the official files.

The model is BLIP's ViT image encoder, a BERT text encoder that cross-attends to the image
tokens, and an MLP head on the text [CLS] feature; the reward is normalised with the mean and
std the original code hard-codes. The official `ImageReward.pt` (a plain state dict in BLIP's
key names) and `med_config.json` load through a key mapping onto `BlipVisionModel` and
`BlipTextModel`; the tokenizer is BERT's (`bert-base-uncased`) with the two special tokens BLIP
adds. The image is resized and centre-cropped exactly as the original preprocessing does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from semdpo_core.models import ModelNotFound, inference_dtype, model_file, pretrained, resolve
from semdpo_core.scorers import CLIP_MEAN, CLIP_STD

CHECKPOINT = "ImageReward.pt"
MED_CONFIG = "med_config.json"
REWARD_MEAN = 0.16717362830052426  # the original's normalisation of the MLP output
REWARD_STD = 1.0333394966054072
MAX_PROMPT_TOKENS = 35  # the original pads/truncates prompts to 35 tokens
UNUSED = ("blip.vision_proj.", "blip.text_proj.", "blip.text_encoder.embeddings.position_ids")

# (official key fragment, transformers key fragment), applied in order; the inverse is the swap.
KEY_MAP = [
    ("blip.visual_encoder.cls_token", "vision.embeddings.class_embedding"),
    ("blip.visual_encoder.pos_embed", "vision.embeddings.position_embedding"),
    ("blip.visual_encoder.patch_embed.proj.", "vision.embeddings.patch_embedding."),
    ("blip.visual_encoder.blocks.", "vision.encoder.layers."),
    ("blip.visual_encoder.norm.", "vision.post_layernorm."),
    (".attn.qkv.", ".self_attn.qkv."),
    (".attn.proj.", ".self_attn.projection."),
    (".norm1.", ".layer_norm1."),
    (".norm2.", ".layer_norm2."),
    ("blip.text_encoder.", "text."),
    ("mlp.layers.", "head.layers."),
]


def to_transformers_key(key: str) -> str:
    for official, ours in KEY_MAP:
        key = key.replace(official, ours)
    return key


def to_official_key(key: str) -> str:
    for official, ours in reversed(KEY_MAP):
        key = key.replace(ours, official)
    return key


class RewardHead(nn.Module):
    """The original MLP head, layer for layer (its dropouts keep the official key numbering)."""

    def __init__(self, width: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(width, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


def configs_from(med_config: dict[str, Any], state: dict[str, torch.Tensor]) -> tuple[Any, Any]:
    """BlipVisionConfig (read off the checkpoint's shapes) and BlipTextConfig (from med_config.json)."""
    from transformers import BlipTextConfig, BlipVisionConfig

    patch = state["blip.visual_encoder.patch_embed.proj.weight"]
    width, patch_size = patch.shape[0], patch.shape[-1]
    positions = state["blip.visual_encoder.pos_embed"].shape[1] - 1
    depth = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("blip.visual_encoder.blocks."))
    vision = BlipVisionConfig(
        hidden_size=width, intermediate_size=state["blip.visual_encoder.blocks.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=depth, num_attention_heads=width // 64,  # BLIP's ViT-B and ViT-L use 64-wide heads
        image_size=int(round(positions**0.5)) * patch_size, patch_size=patch_size, layer_norm_eps=1e-6,
        hidden_act="gelu",
    )
    text = BlipTextConfig(
        vocab_size=med_config["vocab_size"], hidden_size=med_config["hidden_size"],
        encoder_hidden_size=width, intermediate_size=med_config["intermediate_size"],
        num_hidden_layers=med_config["num_hidden_layers"], num_attention_heads=med_config["num_attention_heads"],
        max_position_embeddings=med_config["max_position_embeddings"], hidden_act=med_config.get("hidden_act", "gelu"),
        layer_norm_eps=med_config.get("layer_norm_eps", 1e-12), pad_token_id=med_config.get("pad_token_id", 0),
        bos_token_id=None, eos_token_id=None, sep_token_id=None,  # unused: the text encoder only encodes
        is_decoder=True,  # transformers' switch for the cross-attention layers; run as an encoder below
    )
    return vision, text


class ImageRewardModel(nn.Module):
    """BLIP image encoder + cross-attending BERT + MLP head, as the original ImageReward."""

    def __init__(self, vision_config: Any, text_config: Any):
        super().__init__()
        from transformers import BlipTextModel, BlipVisionModel

        self.vision = BlipVisionModel(vision_config)
        self.text = BlipTextModel(text_config, add_pooling_layer=False)
        self.head = RewardHead(text_config.hidden_size)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        image_embeds = self.vision(pixel_values=pixel_values).last_hidden_state
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        text = self.text(
            input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask, is_decoder=False,
        ).last_hidden_state
        reward = self.head(text[:, 0, :].float()).squeeze(-1)
        return (reward - REWARD_MEAN) / REWARD_STD

    @classmethod
    def from_official(cls, checkpoint: Path, med_config: Path) -> ImageRewardModel:
        """Load `ImageReward.pt` + `med_config.json` (the files of the THUDM/ImageReward repo)."""
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if "state_dict" in state:
            state = state["state_dict"]
        model = cls(*configs_from(json.loads(Path(med_config).read_text()), state))
        mapped = {to_transformers_key(k): v for k, v in state.items() if not k.startswith(UNUSED)}
        missing, unexpected = model.load_state_dict(mapped, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ModelNotFound(
                f"{checkpoint} is not an ImageReward checkpoint: missing {missing[:5]}, unexpected "
                f"{[to_official_key(k) for k in unexpected[:5]]}"
            )
        return model.eval()

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under the official key names (what `ImageReward.pt` holds)."""
        return {to_official_key(k): v for k, v in self.state_dict().items() if not k.endswith("position_ids")}


def blip_tokenizer(ref: str) -> Any:
    """BERT's tokenizer with the two special tokens BLIP adds ([DEC] as bos, [ENC])."""
    from transformers import BertTokenizer

    tokenizer = pretrained(BertTokenizer, ref)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


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
