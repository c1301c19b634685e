"""Full-size architecture profiles with random weights, for benchmarks only.

Timing does not depend on weight values, so the paper's models at their real sizes, built from
their configs with random weights, give honest speed and memory figures where no checkpoint
can be downloaded. Every builder makes the model directly on the target device (nothing is
written to disk); scorers go through their own constructors, so they run in their stage's
dtype. `size="tiny"` returns configs/tiny.yaml's tiny model instead, so the same benchmark
runs on a CPU.
"""

from __future__ import annotations

from typing import Any

import torch

from semdpo_core.models.image_reward_net import ImageRewardModel
from semdpo_core.models.loading import (
    load_diffusion,
    load_rewriter,
    pretrained,
    resolve,
)
from semdpo_core.pipeline.config import ScorerConfig
from semdpo_core.scorers import load_scorer
from semdpo_core.scorers.clip import ClipScorer
from semdpo_core.scorers.hps import (
    HPS_ARCHITECTURE,
    OpenClipScorer,
    hps_transform,
    visual_size,
)
from semdpo_core.scorers.image_reward import ImageRewardScorer, blip_tokenizer

# Stable Diffusion v1.4 (CompVis/stable-diffusion-v1-4): UNet, VAE and CLIP ViT-L/14 text encoder.
SD14_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8,
)
SD14_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512,
)
SD14_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
)
SD14_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
    steps_offset=1,
)
# Qwen1.5-1.8B, the paper's main rewriter.
QWEN15_1_8B = dict(
    vocab_size=151936, hidden_size=2048, intermediate_size=5504, num_hidden_layers=24, num_attention_heads=16,
    num_key_value_heads=16, max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=False,
)
# PickScore_v1 = CLIP ViT-H/14 (laion2B) in transformers' CLIPModel.
CLIP_H14 = dict(
    text_config=dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                     num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu"),
    vision_config=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                       image_size=224, patch_size=14, hidden_act="gelu"),
    projection_dim=1024,
)


def stable_diffusion(size: str, device: torch.device, dtype: torch.dtype) -> Any:
    """SD v1.4 at full size with random weights (DDIM), or the tiny pipeline."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if size == "tiny":
        return load_diffusion("tiny:stable-diffusion", device)
    tokenizer = CLIPTokenizer.from_pretrained(f"{resolve('tiny:stable-diffusion')}/tokenizer")  # CLIP's real BPE
    with torch.device(device):
        pipe = StableDiffusionPipeline(
            vae=AutoencoderKL(**SD14_VAE), text_encoder=CLIPTextModel(CLIPTextConfig(**SD14_TEXT)), tokenizer=tokenizer,
            unet=UNet2DConditionModel(**SD14_UNET), scheduler=DDIMScheduler(**SD14_SCHEDULER), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def rewriter(size: str, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    """(causal LM, tokenizer): Qwen1.5-1.8B's shape with random weights, or the tiny GPT-2. The
    tokenizer is the tiny one either way (its ids fit any vocabulary; speed is per token)."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    if size == "tiny":
        return load_rewriter("tiny:rewriter", device)
    tokenizer = pretrained(AutoTokenizer, "tiny:rewriter")
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    config = Qwen2Config(**QWEN15_1_8B, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(dtype)
    return model.eval(), tokenizer


def scorer(kind: str, size: str, device: torch.device) -> Any:
    """A scorer of `kind` (image_reward, hpsv2, pickscore) at full size with random weights, or
    tiny; built through the scorer's own constructor, so it runs in the stage's dtype."""
    if size == "tiny":  # configs/tiny.yaml's evaluation scorers
        tiny = {"image_reward": ScorerConfig(kind="image_reward", model="tiny:image_reward"),
                "hpsv2": ScorerConfig(kind="hpsv2", model="tiny:hpsv2", architecture="semdpo-tiny-vit"),
                "pickscore": ScorerConfig(kind="pickscore", model="tiny:pickscore")}
        return load_scorer(tiny[kind], device)
    builders = {"image_reward": _full_image_reward, "hpsv2": _full_hpsv2, "pickscore": _full_pickscore}
    if kind not in builders:
        raise ValueError(f"no full-size profile for scorer {kind!r}; one of {sorted(builders)}")
    return builders[kind](device)


def _full_image_reward(device: torch.device) -> Any:
    """ImageReward's real shape: BLIP ViT-L/16 at 224, BERT-base with cross-attention, MLP head."""
    from transformers import BlipTextConfig, BlipVisionConfig

    vision = BlipVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=224, patch_size=16, layer_norm_eps=1e-6)
    text = BlipTextConfig(vocab_size=30524, hidden_size=768, encoder_hidden_size=1024, intermediate_size=3072,
                          num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=512, is_decoder=True,
                          bos_token_id=None, eos_token_id=None, sep_token_id=None)
    tokenizer = blip_tokenizer(_tiny_dir("image_reward") + "/tokenizer")
    with torch.device(device):  # built where it runs: no full-size copy on the CPU first
        model = ImageRewardModel(vision, text)
    return ImageRewardScorer(model, tokenizer, device)


def _full_hpsv2(device: torch.device) -> Any:
    """HPSv2.1's shape: open_clip ViT-H-14 with random weights and HPS's transform."""
    import open_clip

    with torch.device(device):
        model = open_clip.create_model(HPS_ARCHITECTURE, device=device)
    return OpenClipScorer(model, hps_transform(visual_size(model)), open_clip.get_tokenizer(HPS_ARCHITECTURE), device)


def _full_pickscore(device: torch.device) -> Any:
    """PickScore's real shape: transformers CLIPModel ViT-H/14, with the tiny CLIP processor's rules."""
    from transformers import (
        AutoProcessor,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
    )

    tiny = AutoProcessor.from_pretrained(_tiny_dir("pickscore"))
    image_processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tiny.tokenizer)
    with torch.device(device):
        model = CLIPModel(CLIPConfig(**CLIP_H14))
    return ClipScorer(model, processor, device, scale_by_logit=True)


def _tiny_dir(name: str) -> str:
    return resolve(f"tiny:{name}")
