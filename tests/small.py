"""A very small pipeline config for end-to-end tests: the tiny real-architecture profile
(configs/tiny.yaml: diffusers, open_clip, transformers with tiny random weights), a few prompts,
two shards, two methods."""

from pathlib import Path
from typing import Any

import yaml

TINY_YAML = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` applied section by section (nested dicts merge, other values replace)."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def tiny_profile(overrides: dict[str, Any]) -> dict[str, Any]:
    """configs/tiny.yaml with `overrides` merged in: what the machinery tests run."""
    return merged(yaml.safe_load(TINY_YAML.read_text()), overrides)


SMALL = tiny_profile({
    "shard_size": 4,
    "data": {"max_train_prompts": 8, "max_test_prompts": 4},
    "sft": {"epochs": 1},
    "candidates": {"num_candidates": 2, "max_new_tokens": 12},
    "render": {"num_inference_steps": 2, "height": 32, "width": 32},
    "train": {"epochs": 1, "methods": ["dpo", "sem_dpo"]},
    "evaluate": {"max_new_tokens": 12},
})
