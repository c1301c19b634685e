"""A study's specification: a grid of ordinary pipeline configs (seeds x doses x arms) from one base
config, read from a YAML file (`configs/drift_study.yaml`), and the runs it plans.

An arm is a training run compared with the baseline arm, paired within a seed and a dose (or
`sft`/`human`, which every run evaluates without training them). Arms that share their config
overrides are trained in one pipeline run (one config, several `train.methods`); an arm with
overrides of its own (DPO at another learning rate) is a run of its
own. Every run of one seed shares the prompts and the SFT rewriter through the store's content
addressing; each dose samples the seed's candidates again from the same seeds (the same samples
on one machine) and adds its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from semdpo_core.pipeline.config import ConfigError


class Dose(BaseModel):
    """A share of training prompts given one content-changing candidate (`candidates.inject`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["replace", "append"] = "replace"
    share: float = Field(ge=0, le=1)

    @property
    def label(self) -> str:
        return f"{self.kind}@{self.share:g}"

    def overrides(self) -> list[str]:
        """The config overrides of this dose (none at share 0: the plain config, shared by every kind)."""
        if self.share == 0:
            return []
        return [f"candidates.inject={{kind: {self.kind}, share: {self.share!r}}}"]


class Arm(BaseModel):
    """A training run of the study: its method's run label and the overrides it needs beyond the dose."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    method: str
    set: tuple[str, ...] = ()


UNTRAINED = ("sft", "human")  # evaluated in every run, trained by none


class Collapse(BaseModel):
    """When a seed's rewriter counts as collapsed: it loops, or falls far below a reference arm on
    the primary endpoint (the world's learning-rate rule, configs/world_learning_rate.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    reference: str = "sft"  # the arm a collapsed run falls far below
    loops: float = Field(0.1, gt=0, le=1)  # a seed whose share of looping test rewrites is at least this
    drop: float = Field(0.3, gt=0)  # or whose primary endpoint is more than this below the reference's


class Statistics(BaseModel):
    """How the study's intervals are drawn: a bootstrap over seeds, prompts resampled within each."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    resamples: int = Field(2000, ge=100)
    confidence: float = Field(0.95, gt=0, lt=1)
    seed: int = 0


class StudyRun(BaseModel):
    """One pipeline run of the grid: a seed, a dose, and the arms it trains."""

    model_config = ConfigDict(frozen=True)
    index: int
    seed: int
    dose: Dose
    arms: tuple[str, ...]
    overrides: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"seed {self.seed}, {self.dose.label}, {'+'.join(self.arms)}"


class StudySpec(BaseModel):
    """The whole study: what to run, what to compare, how to summarise."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = "drift"
    base: str | None = None  # the pipeline config every run starts from (None: the offline default)
    set: tuple[str, ...] = ()  # overrides of the base shared by every run (sizes, for a small grid)
    seeds: tuple[int, ...] = Field(min_length=1)
    doses: tuple[Dose, ...] = Field(min_length=1)
    arms: dict[str, Arm] = Field(min_length=2)
    baseline: str = "dpo"
    metrics: tuple[str, ...] = ("alignment", "aesthetic", "pick")
    primary: str = "alignment"
    statistics: Statistics = Statistics()
    collapse: Collapse | None = None  # report, per arm and dose, the seeds that collapsed

    @model_validator(mode="after")
    def _names(self) -> StudySpec:
        if self.baseline not in self.arms:
            raise ValueError(f"baseline {self.baseline!r} is not one of the arms ({', '.join(self.arms)})")
        if self.primary not in self.metrics:
            raise ValueError(f"primary {self.primary!r} is not one of the metrics ({', '.join(self.metrics)})")
        runs = [d.overrides() for d in self.doses]
        repeated = [d.label for i, d in enumerate(self.doses) if d.overrides() in runs[:i]]
        if repeated:
            raise ValueError(f"doses {', '.join(repeated)} repeat a dose listed before them (share 0 is one dose "
                             "for every kind: list it once)")
        if self.collapse is not None and self.collapse.reference not in self.arms:
            raise ValueError(f"collapse.reference {self.collapse.reference!r} is not one of the arms")
        for _, arms in self.groups():
            if all(self.arms[a].method in UNTRAINED for a in arms):
                raise ValueError(f"arms {', '.join(arms)} train nothing ({' and '.join(UNTRAINED)} are evaluated by "
                                 "every run): give them the `set` of an arm that trains")
        for arm in self.arms.values():
            labels = [other for other, a in self.arms.items() if a.method == arm.method and a.set == arm.set]
            if len(labels) > 1:
                raise ValueError(f"arms {', '.join(labels)} train the same run; give one of them other `set` overrides")
        return self

    def groups(self) -> list[tuple[tuple[str, ...], list[str]]]:
        """Arms that share their overrides, trained in one run: [(overrides, [arm names])], in spec order."""
        out: dict[tuple[str, ...], list[str]] = {}
        for name, arm in self.arms.items():
            out.setdefault(arm.set, []).append(name)
        return list(out.items())

    def runs(self) -> list[StudyRun]:
        """Every pipeline run of the grid, seed by seed (a killed study has finished whole seeds first)."""
        runs: list[StudyRun] = []
        for seed in self.seeds:
            for dose in self.doses:
                for overrides, arms in self.groups():
                    methods = ", ".join(dict.fromkeys(self.arms[a].method for a in arms
                                                      if self.arms[a].method not in UNTRAINED))
                    every = (*self.set, f"seed={seed}", *dose.overrides(), *overrides, f"train.methods=[{methods}]")
                    runs.append(StudyRun(index=len(runs), seed=seed, dose=dose, arms=tuple(arms), overrides=every))
        return runs


def load_spec(path: str | Path) -> StudySpec:
    """The study spec in a YAML file; a bad field is named with the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"study spec {path} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"study spec {path} is not valid YAML: {e}") from None
    try:
        return StudySpec.model_validate(data or {})
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(part) for part in err['loc']) or 'spec'}: "
                             f"{err['msg'].removeprefix('Value error, ')}" for err in e.errors())
        raise ConfigError(f"study spec {path}: {problems}") from None
