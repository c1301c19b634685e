"""ImageReward's network (Xu et al., 2023) on transformers' own BLIP modules, and the mapping of
the official checkpoint's key names onto it.

BLIP's ViT image encoder, a BERT text encoder that cross-attends to the image tokens, and an MLP
head on the text [CLS] feature; the reward is normalised with the mean and std the original code
hard-codes. Apart from the scorer (`semdpo_core.scorers.image_reward`) so that the tiny builders
(`semdpo_core.models.tiny`) can build the network without importing model loading.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from semdpo_core.models.locate import ModelNotFound

CHECKPOINT = "ImageReward.pt"
MED_CONFIG = "med_config.json"
REWARD_MEAN = 0.16717362830052426  # the original's normalisation of the MLP output
REWARD_STD = 1.0333394966054072
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

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
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


def add_blip_tokens(tokenizer: Any) -> Any:
    """BERT's tokenizer with the two special tokens BLIP adds ([DEC] as bos, [ENC])."""
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer
