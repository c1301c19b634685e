"""The stage table: one declaration per stage, in pipeline order.

Each stage names the stages it reads (in the order its fingerprint hashes them), the settings it
depends on, its schema, how it is sharded, the work pool it runs on and its computation. The plan
(`semdpo_core/pipeline/plan.py`) hashes exactly the declared settings into the stage's fingerprint and hands
the computation those settings and nothing else (`semdpo_core/pipeline/stage_context.py`); the flow runs the
stages in this order; `prefect.yaml` has a deployment per stage, checked against this table.

Settings that change how a stage runs but never what it writes are the `Runtime` (`runtime`
below): the device, the store, `render.compile`, and how training checkpoints and logs
(`train.checkpoint_every`, `keep_checkpoints`, `report_to`, `logging_dir`); `runner.*` only
decides where tasks run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa

from semdpo_core.data.prompt_sources import PromptFileError, field_error, source_digest
from semdpo_core.pipeline.config import ConfigError, PipelineConfig, cache_home
from semdpo_core.pipeline.schemas import (
    CANDIDATES,
    DISTANCES,
    EVALUATION,
    FIDELITY,
    IMAGES,
    PAIRS,
    PROMPTS,
    REFERENCE,
    REPORT_SCORES,
    REWARDS,
    SFT_LOG,
    TRAIN_LOG,
)
from semdpo_core.pipeline.stage_context import Runtime, Source, StageContext
from semdpo_core.preference.methods import TrainRun, get_method, train_runs
from semdpo_core.stages.candidates import candidates_shard
from semdpo_core.stages.evaluate import evaluate_shard, validate_shard
from semdpo_core.stages.fidelity import fidelity_shard
from semdpo_core.stages.label import label_shard
from semdpo_core.stages.pairs import pairs_stage
from semdpo_core.stages.prompts import prompts_stage
from semdpo_core.stages.reference import reference_shard
from semdpo_core.stages.render import render_shard
from semdpo_core.stages.report.stage import report_stage
from semdpo_core.stages.sft import sft_stage
from semdpo_core.stages.train import train_stage
from semdpo_core.stages.weigh import weigh_shard

SHARED_TRAIN_SETTINGS = (
    "beta", "learning_rate", "batch_size", "gradient_accumulation_steps", "warmup_ratio", "max_grad_norm",
    "precision", "epochs", "max_length", "disable_dropout",
)


@dataclass(frozen=True)
class Planned:
    """One dataset a stage writes in a plan: its label, its hashed settings, and the label of the
    upstream output behind each input role (in fingerprint order)."""

    label: str
    settings: dict[str, Any]
    inputs: dict[str, str]


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline."""

    name: str
    # upstream stages read, by role = stage name (the stages with `outputs`: what they may read)
    inputs: tuple[str, ...]
    settings: Callable[..., dict[str, Any]]  # what the fingerprint hashes, and all the computation reads
    schema: pa.Schema
    pool: Literal["cpu", "gpu"]
    compute: Callable[..., Any]  # (ctx) -> Output, or (ctx, shard) -> pa.Table when sharded
    shards: Callable[[StageContext], int] | None = None  # None: one task computes the whole dataset
    outputs: Callable[[PipelineConfig], list[Planned]] | None = None  # None: one output, if `needed`
    needed: Callable[[PipelineConfig], bool] = lambda config: True
    concurrent: bool = False  # its outputs are independent runs: on Ray they run at once, one GPU each
    summary: str = ""  # what it writes (prefect.yaml's deployment descriptions)

    def planned(self, config: PipelineConfig) -> list[Planned]:
        """The datasets this stage writes under `config` (none when it is not needed)."""
        if self.outputs is not None:
            return self.outputs(config)
        if not self.needed(config):
            return []
        return [Planned(self.name, self.settings(config), {name: name for name in self.inputs})]


def runtime(config: PipelineConfig) -> Runtime:
    """What stages read that no fingerprint hashes: how they run, never what they write."""
    t = config.train
    return Runtime(device=config.device, store=config.store_root(), compile_unet=config.render.compile,
                   checkpoint_every=t.checkpoint_every, keep_checkpoints=t.keep_checkpoints,
                   report_to=tuple(t.report_to),
                   logging_dir=t.logging_dir or str(cache_home() / "semdpo" / "tensorboard"))


def runs(config: PipelineConfig) -> list[TrainRun]:
    """The training runs `config` asks for (a method, and for a sweep each alpha)."""
    return train_runs(config.train.methods, config.train.alphas())


def evaluated_labels(config: PipelineConfig) -> list[str]:
    """Methods to evaluate, in order: human input, SFT, then training runs (a method name covers its alphas)."""
    rewriters = list(config.evaluate.rewriters)
    clash = [name for name in rewriters if name in ("human", "sft", *config.train.methods)]
    if clash:
        raise ConfigError(f"evaluate.rewriters: {', '.join(clash)} is already a method's name; "
                          "name the rewriter otherwise")
    wanted = config.evaluate.methods or ["human", "sft", *config.train.methods, *rewriters]
    return ([m for m in ("human", "sft") if m in wanted] + [run.label for run in runs(config) if run.method in wanted]
            + [name for name in rewriters if name in wanted])


def uses_fidelity(config: PipelineConfig) -> bool:
    """Whether a trained method reads the fidelity stage's scores (of rendered candidates: none
    when the user brings the pairs, so such a method cannot train on them)."""
    wanted = [run.label for run in runs(config) if get_method(run.method).uses_fidelity]
    if wanted and own_pairs(config):
        raise ConfigError(f"{', '.join(wanted)} needs a fidelity score of each rendered candidate, which "
                          "data.preference_pairs does not have; drop it from train.methods")
    return bool(wanted)


def uses_reference(config: PipelineConfig) -> bool:
    """Whether a trained method reads the reference stage's log-probs."""
    return any(get_method(run.method).uses_reference for run in runs(config))


# --- settings: what each stage's fingerprint hashes ----------------------------------------------


def _sharded(config: PipelineConfig) -> dict[str, Any]:
    return {"shard_size": config.shard_size}


def _render(config: PipelineConfig) -> dict[str, Any]:
    return config.render.model_dump(exclude={"compile"})  # how the UNet runs, not what it draws: runtime


def prompts_settings(config: PipelineConfig) -> dict[str, Any]:
    """The data section, with the digest of every prompt file's bytes (an edited file reruns)."""
    # preference_pairs is the pairs stage's; build says how the files were made (their digests are hashed)
    data = config.data.model_dump(exclude={"preference_pairs", "build"})
    data["digests"] = {
        "train_prompts": field_digest("data.train_prompts", config.data.train_prompts, config),
        "test_prompts": {name: field_digest(f"data.test_prompts ({name})", source, config)
                         for name, source in config.data.test_sets().items()},
    }
    settings = {"data": data, "tokenizer": config.sft.base_model, "seed": config.seed}
    if config.train.chooses_alpha():
        settings["validation_prompts"] = config.train.validation_prompts
    return settings


def field_digest(field: str, source: str, config: PipelineConfig) -> str:
    """A prompt source's digest; an error names its config field."""
    try:
        return source_digest(source)
    except PromptFileError as e:
        raise field_error(field, e, config.data.build is not None) from None


def candidates_settings(config: PipelineConfig) -> dict[str, Any]:
    # no dose: the section as it hashed before `inject` existed (stores keep their fingerprints)
    section = config.candidates.model_dump(exclude=set() if config.candidates.inject else {"inject"})
    return {"candidates": section, "seed": config.seed, **_sharded(config)}


def render_settings(config: PipelineConfig) -> dict[str, Any]:
    return {**_render(config), **_sharded(config)}


def label_settings(config: PipelineConfig) -> dict[str, Any]:
    return {**config.label.model_dump(), **_sharded(config)}


def fidelity_settings(config: PipelineConfig) -> dict[str, Any]:
    return {**config.fidelity.model_dump(), **_sharded(config)}


def pairs_settings(config: PipelineConfig) -> dict[str, Any]:
    """Nothing but the inputs; or, for the user's own pairs, their file (by the digest of its bytes)."""
    pairs = config.data.preference_pairs
    return {} if pairs is None else {"preference_pairs": Source(pairs, source_digest(pairs))}


def own_pairs(config: PipelineConfig) -> bool:
    """The user brings the preference pairs (`data.preference_pairs`): no candidates, images or labels."""
    return config.data.preference_pairs is not None


def makes_pairs(config: PipelineConfig) -> bool:
    return not own_pairs(config)


def pairs_outputs(config: PipelineConfig) -> list[Planned]:
    """One dataset: from the candidates and their labels, or from the user's pairs file."""
    inputs = {} if own_pairs(config) else {"candidates": "candidates", "label": "label"}
    return [Planned("pairs", pairs_settings(config), inputs)]


def weigh_settings(config: PipelineConfig) -> dict[str, Any]:
    return {**config.weigh.model_dump(), **_sharded(config)}


def reference_settings(config: PipelineConfig) -> dict[str, Any]:
    """The training's batching and arithmetic, which the log-probs depend on (padding changes the sums)."""
    t = config.train
    return {"max_length": t.max_length, "precision": t.precision, "batch_size": t.batch_size, **_sharded(config)}


def sft_settings(config: PipelineConfig) -> dict[str, Any]:
    pairs = config.data.sft_pairs
    sft = config.sft.model_dump(exclude={"backbones"})  # each backbone runs as a config of its own
    return {"sft": sft, "pairs": Source(pairs, source_digest(pairs)), "seed": config.seed}


def train_settings(config: PipelineConfig, run: TrainRun) -> dict[str, Any]:
    """What a run's result depends on: the shared settings, its method, its alpha, its method's section."""
    settings: dict[str, Any] = {k: getattr(config.train, k) for k in SHARED_TRAIN_SETTINGS}
    settings["method"] = run.method
    if run.alpha is not None:
        settings["alpha"] = run.alpha
    if get_method(run.method).section is not None:
        settings[run.method] = getattr(config.train, run.method).model_dump()
    settings["seed"] = config.seed
    return settings


def evaluate_settings(config: PipelineConfig) -> dict[str, Any]:
    # no published rewriter: the section as it hashed before `rewriters` existed (stores keep their fingerprints)
    section = config.evaluate.model_dump(exclude=set() if config.evaluate.rewriters else {"rewriters"})
    return {"evaluate": section, "methods": evaluated_labels(config), "render": _render(config),
            "semantic_encoder": config.weigh.encoder, "seed": config.seed}


def sweep_labels(config: PipelineConfig) -> list[str]:
    """The runs alpha is chosen among (train.alpha: auto), in grid order."""
    return ([run.label for run in runs(config) if get_method(run.method).sweeps_alpha]
            if config.train.chooses_alpha() else [])


def validate_settings(config: PipelineConfig) -> dict[str, Any]:
    return {**evaluate_settings(config), "methods": sweep_labels(config)}


def report_settings(config: PipelineConfig) -> dict[str, Any]:
    return {"report": config.report.model_dump(), "scorers": config.evaluate.model_dump()["scorers"],
            "semantic_encoder": config.weigh.encoder}


# --- outputs of the stages with more than one, or inputs that depend on the methods ---------------


def train_outputs(config: PipelineConfig) -> list[Planned]:
    """One dataset per training run, reading what its method declares."""
    out = []
    for run in runs(config):
        method = get_method(run.method)
        inputs = {"sft": "sft", "pairs": "weigh" if method.uses_distance else "pairs"}
        if method.uses_reference:
            inputs["reference"] = "reference"
        if method.uses_fidelity:
            inputs["fidelity"] = "fidelity"
        out.append(Planned(f"train:{run.label}", train_settings(config, run), inputs))
    return out


def evaluate_outputs(config: PipelineConfig) -> list[Planned]:
    """One dataset, reading the prompts, the SFT checkpoint and each evaluated run's checkpoint."""
    trained = {run.label for run in runs(config)}
    inputs = {"prompts": "prompts", "sft": "sft"}
    inputs.update({label: f"train:{label}" for label in evaluated_labels(config) if label in trained})
    return [Planned("evaluate", evaluate_settings(config), inputs)]


def validate_outputs(config: PipelineConfig) -> list[Planned]:
    """When alpha is chosen: one dataset scoring every sweep run on the validation prompts."""
    labels = sweep_labels(config)
    if not labels:
        return []
    inputs = {"prompts": "prompts", "sft": "sft", **{label: f"train:{label}" for label in labels}}
    return [Planned("validate", validate_settings(config), inputs)]


def report_outputs(config: PipelineConfig) -> list[Planned]:
    """One dataset from the evaluation, the validation scores when alpha is chosen, and each
    evaluated run's training log (its curves)."""
    inputs = {"evaluate": "evaluate", **({"validate": "validate"} if sweep_labels(config) else {})}
    trained = {run.label for run in runs(config)}
    inputs.update({f"train:{label}": f"train:{label}" for label in evaluated_labels(config) if label in trained})
    return [Planned("report", report_settings(config), inputs)]


# --- shard rules ----------------------------------------------------------------------------------


def per_train_prompts(ctx: StageContext) -> int:
    """One shard per `shard_size` training prompts."""
    count = ctx.store.manifest(ctx.inputs["prompts"])["meta"]["train_prompts"]
    return max(1, -(-count // ctx.settings.shard_size))


def per_candidates_part(ctx: StageContext) -> int:
    """One shard per part of the candidates (render, label and fidelity follow the candidates' shards)."""
    return ctx.store.num_parts(ctx.inputs["candidates"])


def per_pairs(ctx: StageContext) -> int:
    """One shard per `shard_size` pairs."""
    return max(1, -(-ctx.store.manifest(ctx.inputs["pairs"])["rows"] // ctx.settings.shard_size))


def per_method(ctx: StageContext) -> int:
    """One shard per evaluated method."""
    return len(ctx.settings.methods)


# --- the table ------------------------------------------------------------------------------------

STAGES: tuple[Stage, ...] = (
    Stage("prompts", (), prompts_settings, PROMPTS, "cpu", prompts_stage,
          summary="the prompt files (data.*) -> PROMPTS: train rows, then each test set's rows"),
    Stage("sft", (), sft_settings, SFT_LOG, "gpu", sft_stage, summary="data.sft_pairs -> SFT_LOG + the SFT checkpoint"),
    Stage("candidates", ("prompts", "sft"), candidates_settings, CANDIDATES, "gpu", candidates_shard, per_train_prompts,
          needed=makes_pairs, summary="k sampled rewrites per train prompt, each with its render seed"),
    Stage("render", ("candidates",), render_settings, IMAGES, "gpu", render_shard, per_candidates_part,
          needed=makes_pairs, summary="one PNG per candidate"),
    Stage("label", ("candidates", "render"), label_settings, REWARDS, "gpu", label_shard, per_candidates_part,
          needed=makes_pairs, summary="the reward of each image vs its ORIGINAL prompt"),
    Stage("fidelity", ("candidates", "render"), fidelity_settings, FIDELITY, "gpu", fidelity_shard,
          per_candidates_part, needed=uses_fidelity,
          summary="a text-fidelity score per image (only when a method uses fidelity)"),
    Stage("pairs", ("candidates", "label"), pairs_settings, PAIRS, "cpu", pairs_stage, outputs=pairs_outputs,
          summary="per prompt, best = chosen, worst = rejected (or data.preference_pairs, read as they are)"),
    Stage("weigh", ("pairs",), weigh_settings, DISTANCES, "gpu", weigh_shard, per_pairs,
          summary="the pairs + semantic_distance d(x, y_w) (alpha-free)"),
    Stage("reference", ("sft", "pairs"), reference_settings, REFERENCE, "gpu", reference_shard, per_pairs,
          needed=uses_reference, summary="log ref(y_w), log ref(y_l), KTO's log ref(y'), token counts"),
    Stage("train", ("sft", "pairs", "weigh", "reference", "fidelity"), train_settings, TRAIN_LOG, "gpu", train_stage,
          outputs=train_outputs, concurrent=True, summary="TRAIN_LOG + the policy checkpoint, one dataset per run"),
    Stage("validate", ("prompts", "sft", "train"), validate_settings, EVALUATION, "gpu", validate_shard, per_method,
          outputs=validate_outputs, summary="every sweep run on the validation prompts (only with train.alpha: auto)"),
    Stage("evaluate", ("prompts", "sft", "train"), evaluate_settings, EVALUATION, "gpu", evaluate_shard, per_method,
          outputs=evaluate_outputs,
          summary="rewrite, image, every scorer's score vs the original, drift, semantic_distance"),
    Stage("report", ("evaluate", "validate", "train"), report_settings, REPORT_SCORES, "cpu", report_stage,
          outputs=report_outputs, summary="REPORT_SCORES + report.md, report.json, plots"),
)
STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)


def stage(name: str) -> Stage:
    """The stage called `name`, or an error listing them."""
    for s in STAGES:
        if s.name == name:
            return s
    raise ValueError(f"unknown stage {name!r}; choose one of {', '.join(STAGE_NAMES)}")
