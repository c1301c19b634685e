"""The pipeline's plan: every stage's DatasetRef, computed from the config alone.

A fingerprint hashes the stage's own settings and its inputs' fingerprints, so the plan says
before anything runs which outputs already exist in the store and which must be computed.
"""

from __future__ import annotations

from typing import Any

from semdpo_core.config import PipelineConfig
from semdpo_core.prompts import source_digest
from semdpo_core.store import DatasetRef, fingerprint

STAGES = ("prompts", "sft", "candidates", "render", "label", "pairs", "weigh", "train", "evaluate")


def plan_pipeline(config: PipelineConfig) -> dict[str, Any]:
    """{stage: DatasetRef}, with `train` a {method: DatasetRef} (one checkpoint per method)."""
    data = config.data.model_dump()
    data["digests"] = {k: source_digest(data[k]) for k in ("train_prompts", "test_prompts")}
    prompts = fingerprint("prompts", {"data": data, "tokenizer": config.sft.base_model, "seed": config.seed})
    sft = fingerprint(
        "sft",
        {"sft": config.sft.model_dump(), "pairs": source_digest(config.data.sft_pairs), "seed": config.seed},
    )
    shards = {"shard_size": config.shard_size}
    candidates = fingerprint(
        "candidates", {"candidates": config.candidates.model_dump(), "seed": config.seed, **shards}, [prompts, sft]
    )
    render = fingerprint("render", {**config.render.model_dump(), **shards}, [candidates])
    label = fingerprint("label", {**config.label.model_dump(), **shards}, [candidates, render])
    pairs = fingerprint("pairs", {}, [candidates, label])
    weigh = fingerprint("weigh", {**config.weigh.model_dump(), **shards}, [pairs])
    train_settings = config.train.model_dump(exclude={"methods", "checkpoint_every"})  # results do not depend on it
    train = {
        method: fingerprint(
            "train",
            {"method": method, "train": train_settings, "seed": config.seed},
            [sft, weigh if method == "sem_dpo" else pairs],
        )
        for method in config.train.methods
    }
    evaluate = fingerprint(
        "evaluate",
        {"evaluate": config.evaluate.model_dump(), "render": config.render.model_dump(), "seed": config.seed},
        [prompts, sft, *[train[m] for m in config.evaluate.methods if m in train]],
    )
    return {
        "prompts": prompts, "sft": sft, "candidates": candidates, "render": render, "label": label,
        "pairs": pairs, "weigh": weigh, "train": train, "evaluate": evaluate,
    }


def flat_refs(plan: dict[str, Any]) -> list[tuple[str, DatasetRef]]:
    """(label, ref) for every output of the plan, in pipeline order."""
    out = []
    for stage in STAGES:
        value = plan[stage]
        if isinstance(value, dict):
            out.extend((f"{stage}:{name}", ref) for name, ref in value.items())
        else:
            out.append((stage, value))
    return out
