"""The benchmark profiles are the paper's models at their real sizes (built on the meta device:
shapes without memory), so the throughput figures measured with them are honest."""

import pytest
import torch

from benchmarks import profiles

META = torch.device("meta")


def millions(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def test_full_size_profiles_have_the_published_parameter_counts():
    pipe = profiles.stable_diffusion("full", META, torch.float16)
    assert millions(pipe.unet) == pytest.approx(859.52, rel=1e-3)  # SD v1.4 UNet
    assert millions(pipe.vae) == pytest.approx(83.65, rel=1e-3)
    assert millions(pipe.text_encoder) == pytest.approx(123.06, rel=1e-3)  # CLIP ViT-L/14 text tower
    rewriter, _ = profiles.rewriter("full", META, torch.float16)
    assert millions(rewriter) == pytest.approx(1836.8, rel=1e-3)  # Qwen1.5-1.8B
    assert millions(profiles.scorer("hpsv2", "full", META).model) == pytest.approx(986.1, rel=1e-3)
    assert millions(profiles.scorer("pickscore", "full", META).model) == pytest.approx(986.1, rel=1e-3)
    image_reward = profiles.scorer("image_reward", "full", META).model
    assert millions(image_reward.vision) == pytest.approx(303.3, rel=5e-3)  # BLIP ViT-L/16 at 224
    assert image_reward.text.config.hidden_size == 768 and image_reward.text.config.num_hidden_layers == 12
