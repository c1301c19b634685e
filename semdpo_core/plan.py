"""The pipeline's plan: every stage's DatasetRef, computed from the config alone.

A fingerprint hashes the stage's own settings and its inputs' fingerprints, so the plan says
before anything runs which outputs already exist in the store and which must be computed.
Each training run (a method, and for Sem-DPO each alpha) has its own fingerprint: a new alpha
retrains Sem-DPO alone and reuses every upstream artifact and every other method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from semdpo_core.config import PipelineConfig, TrainConfig
from semdpo_core.prompts import source_digest
from semdpo_core.store import DatasetRef, fingerprint

STAGES = (
    "prompts", "sft", "candidates", "render", "label", "fidelity", "pairs", "weigh", "reference", "train", "evaluate",
    "report",
)
USES_REFERENCE = {"dpo", "sem_dpo", "ipo", "kto", "beta_dpo", "hard_filter", "additive"}  # all but ORPO
USES_DISTANCE = {"sem_dpo", "hard_filter"}
USES_FIDELITY = {"additive"}
SHARED_TRAIN_SETTINGS = (
    "beta", "learning_rate", "batch_size", "gradient_accumulation_steps", "warmup_ratio", "max_grad_norm",
    "precision", "epochs", "max_length",
)


@dataclass(frozen=True)
class TrainRun:
    """One training run: a method, and Sem-DPO's alpha."""

    label: str
    method: str
    alpha: float | None = None


def train_runs(train: TrainConfig) -> list[TrainRun]:
    """The runs `train.methods` asks for; a list of alphas gives one Sem-DPO run per alpha."""
    runs = []
    for method in train.methods:
        if method == "sem_dpo":
            alphas = train.alphas()
            runs += [TrainRun("sem_dpo" if len(alphas) == 1 else f"sem_dpo@alpha={a:g}", method, a) for a in alphas]
        else:
            runs.append(TrainRun(method, method))
    return runs


def method_settings(train: TrainConfig, run: TrainRun) -> dict[str, Any]:
    """What a run's result depends on: the shared settings and its own method's section."""
    settings = {k: getattr(train, k) for k in SHARED_TRAIN_SETTINGS}
    settings["method"] = run.method
    if run.alpha is not None:
        settings["alpha"] = run.alpha
    own = getattr(train, run.method, None)
    if own is not None and hasattr(own, "model_dump"):
        settings[run.method] = own.model_dump()
    return settings


def evaluated_labels(config: PipelineConfig, runs: list[TrainRun]) -> list[str]:
    """Methods to evaluate, in order: human input, SFT, then training runs (a method name covers its alphas)."""
    wanted = config.evaluate.methods or ["human", "sft", *config.train.methods]
    labels = [m for m in ("human", "sft") if m in wanted]
    return labels + [run.label for run in runs if run.method in wanted]


def plan_pipeline(config: PipelineConfig) -> dict[str, Any]:
    """{stage: DatasetRef}, with `train` a {run label: DatasetRef} (one checkpoint per run)."""
    data = config.data.model_dump()
    data["digests"] = {
        "train_prompts": source_digest(config.data.train_prompts),
        "test_prompts": {name: source_digest(source) for name, source in config.data.test_sets().items()},
    }
    prompts = fingerprint("prompts", {"data": data, "tokenizer": config.sft.base_model, "seed": config.seed})
    sft = fingerprint(
        "sft",
        {"sft": config.sft.model_dump(), "pairs": source_digest(config.data.sft_pairs), "seed": config.seed},
    )
    shards = {"shard_size": config.shard_size}
    candidates = fingerprint(
        "candidates", {"candidates": config.candidates.model_dump(), "seed": config.seed, **shards}, [prompts, sft]
    )
    render_settings = config.render.model_dump(exclude={"compile"})  # how the UNet runs, not what it draws
    render = fingerprint("render", {**render_settings, **shards}, [candidates])
    label = fingerprint("label", {**config.label.model_dump(), **shards}, [candidates, render])
    fidelity = fingerprint("fidelity", {**config.fidelity.model_dump(), **shards}, [candidates, render])
    pairs = fingerprint("pairs", {}, [candidates, label])
    weigh = fingerprint("weigh", {**config.weigh.model_dump(), **shards}, [pairs])
    runs = train_runs(config.train)
    needs_reference = any(run.method in USES_REFERENCE for run in runs)
    # the reference task batches the pairs by train.batch_size (padding changes the float sums): hashed too
    reference_settings = {"max_length": config.train.max_length, "precision": config.train.precision,
                          "batch_size": config.train.batch_size}
    reference = fingerprint("reference", {**reference_settings, **shards}, [sft, pairs])
    train = {}
    for run in runs:
        inputs = [sft, weigh if run.method in USES_DISTANCE else pairs]
        if run.method in USES_REFERENCE:
            inputs.append(reference)
        if run.method in USES_FIDELITY:
            inputs.append(fidelity)
        train[run.label] = fingerprint("train", {**method_settings(config.train, run), "seed": config.seed}, inputs)
    evaluated = evaluated_labels(config, runs)
    evaluate = fingerprint(
        "evaluate",
        {"evaluate": config.evaluate.model_dump(), "methods": evaluated, "render": render_settings,
         "semantic_encoder": config.weigh.encoder, "seed": config.seed},
        [prompts, sft, *[train[label] for label in evaluated if label in train]],
    )
    report = fingerprint(
        "report", {"report": config.report.model_dump(), "scorers": config.evaluate.model_dump()["scorers"]}, [evaluate]
    )
    return {
        "prompts": prompts, "sft": sft, "candidates": candidates, "render": render, "label": label,
        "fidelity": fidelity if any(run.method in USES_FIDELITY for run in runs) else None, "pairs": pairs, "weigh": weigh, "reference": reference if needs_reference else None, "train": train,
        "evaluate": evaluate, "report": report,
        "runs": runs, "evaluated": evaluated,
    }


def flat_refs(plan: dict[str, Any]) -> list[tuple[str, DatasetRef]]:
    """(label, ref) for every output of the plan, in pipeline order."""
    out = []
    for stage in STAGES:
        value = plan[stage]
        if value is None:
            continue
        if isinstance(value, dict):
            out.extend((f"{stage}:{name}", ref) for name, ref in value.items())
        else:
            out.append((stage, value))
    return out
