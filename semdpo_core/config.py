"""The pipeline's configuration: one pydantic model, filled from YAML, overridden from the CLI.

The defaults are the offline profile: tiny random-weight models with the real architectures,
built on first use, and the real all-MiniLM-L6-v2 for semantic distances. `configs/paper.yaml`
carries the paper's settings. Every stage reads only its own section; a stage's fingerprint
hashes that section, so a change to `weigh.alpha` reruns weigh and what follows, nothing else.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Section(BaseModel):
    """A config section: unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class DataConfig(Section):
    """Where prompts come from. `demo:NAME` is the built-in demo set; anything else is a file."""

    train_prompts: str = "demo:train_prompts"
    test_prompts: str = "demo:test_prompts"
    sft_pairs: str = "demo:sft_pairs"
    prompt_column: str = "prompt"
    max_train_prompts: int | None = Field(48, ge=1)
    max_test_prompts: int | None = Field(16, ge=1)
    max_prompt_tokens: int = Field(48, ge=1, description="longer prompts are reported and skipped")


class SFTConfig(Section):
    """Supervised fine-tuning of the base rewriter on (original, rewrite) pairs."""

    base_model: str = "tiny:rewriter"
    epochs: int = Field(3, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    batch_size: int = Field(16, ge=1)
    max_length: int = Field(96, ge=8)


class CandidatesConfig(Section):
    """k rewrites per training prompt, sampled from the SFT rewriter."""

    num_candidates: int = Field(4, ge=2)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(24, ge=1)
    batch_size: int = Field(16, ge=1)


class RenderConfig(Section):
    """Stable Diffusion rendering of every candidate (DDIM, seeded per candidate)."""

    model: str = "tiny:stable-diffusion"
    num_inference_steps: int = Field(4, ge=1)
    guidance_scale: float = Field(7.5, ge=0)
    height: int = Field(64, ge=8)
    width: int = Field(64, ge=8)
    batch_size: int = Field(16, ge=1)


class ScorerConfig(Section):
    """A scorer of images against prompts; `kind` picks the scoring rule."""

    kind: Literal["clip", "pickscore", "image_reward", "hpsv2"]
    model: str
    processor: str | None = None


class LabelConfig(Section):
    """The reward model that turns rendered candidates into chosen/rejected pairs."""

    reward_model: ScorerConfig = ScorerConfig(kind="pickscore", model="tiny:pickscore")
    batch_size: int = Field(32, ge=1)


class WeighConfig(Section):
    """Offline semantic weights W = exp(-alpha * (1 - cos(e(x), e(y_w))))."""

    encoder: str = "sentence-transformers/all-MiniLM-L6-v2"
    alpha: float = Field(4.0, ge=0)
    batch_size: int = Field(64, ge=1)


class TrainConfig(Section):
    """Preference fine-tuning from the SFT checkpoint; the SFT model is the reference."""

    methods: list[Literal["dpo", "sem_dpo"]] = ["dpo", "sem_dpo"]
    beta: float = Field(0.05, gt=0)
    learning_rate: float = Field(5e-4, gt=0)
    batch_size: int = Field(8, ge=1)
    epochs: int = Field(2, ge=1)
    max_length: int = Field(96, ge=8)
    checkpoint_every: int = Field(4, ge=0, description="steps between resumable checkpoints; 0: none")


class EvaluateConfig(Section):
    """Rewrite held-out prompts with every method, render with shared seeds, score vs the original."""

    methods: list[Literal["human", "sft", "dpo", "sem_dpo"]] = ["human", "sft", "dpo", "sem_dpo"]
    max_new_tokens: int = Field(24, ge=1)
    batch_size: int = Field(16, ge=1)
    scorers: dict[str, ScorerConfig] = {
        "clip_score": ScorerConfig(kind="clip", model="tiny:clip"),
        "pick_score": ScorerConfig(kind="pickscore", model="tiny:pickscore"),
    }


class PipelineConfig(Section):
    """One pipeline run: where artifacts go, on what device, and each stage's settings."""

    name: str = "offline-default"
    seed: int = 0
    store: str | None = Field(None, description="artifact store root; default $SEMDPO_STORE")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    shard_size: int = Field(
        16, ge=1, description="prompts per shard (candidates, render, label) and pairs per shard (weigh)"
    )
    data: DataConfig = DataConfig()
    sft: SFTConfig = SFTConfig()
    candidates: CandidatesConfig = CandidatesConfig()
    render: RenderConfig = RenderConfig()
    label: LabelConfig = LabelConfig()
    weigh: WeighConfig = WeighConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()

    @model_validator(mode="after")
    def _evaluated_methods_are_trained(self) -> PipelineConfig:
        untrained = [m for m in self.evaluate.methods if m not in ("human", "sft") and m not in self.train.methods]
        if untrained:
            raise ValueError(f"evaluate.methods {untrained} are not in train.methods {self.train.methods}")
        return self

    def store_root(self) -> str:
        """The store root: the config's, else $SEMDPO_STORE, else a folder in the user's cache."""
        if self.store:
            return self.store
        return os.environ.get("SEMDPO_STORE") or str(_cache_home() / "semdpo" / "store")


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the file and field."""


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML config (or the offline default), apply `section.field=value` overrides."""
    data: dict[str, Any] = {}
    source = "the offline default"
    if path is not None:
        source = str(path)
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections, not {type(data).__name__}")
    for override in overrides or []:
        _apply_override(data, override)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        lines = [f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"invalid config ({source}):\n" + "\n".join(lines)) from None


def _apply_override(data: dict[str, Any], override: str) -> None:
    """Set one nested field from `a.b.c=value`; the value is parsed as YAML (numbers, lists)."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} must look like section.field=value")
    *parents, leaf = key.strip().split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part} is not a section")
    node[leaf] = yaml.safe_load(raw)
