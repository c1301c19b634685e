"""What the store holds for a config's plan: per stage, done, damaged, partly done or missing."""

from __future__ import annotations

from dataclasses import dataclass

from semdpo_core.pipeline.config import PipelineConfig
from semdpo_core.pipeline.plan import plan_pipeline
from semdpo_core.store.artifact_store import ArtifactStore, DatasetRef


@dataclass(frozen=True)
class StageStatus:
    label: str
    ref: DatasetRef
    state: str  # "done", "damaged", "partial", "missing"
    detail: str


def stage_status(store: ArtifactStore, label: str, ref: DatasetRef) -> StageStatus:
    if store.is_committed(ref):
        bad = store.invalid_entries(ref)
        if bad:
            return StageStatus(label, ref, "damaged", f"{len(bad)} damaged: {', '.join(bad[:3])}")
        parts = len(store.manifest(ref)["parts"])
        return StageStatus(label, ref, "done", f"{parts} part{'s' if parts != 1 else ''}")
    records = [k for k in store.backend.list(f"{ref.prefix}/_shards/") if k.endswith(".json")]
    checkpoint = store.latest_checkpoint(ref) if ref.stage == "train" else None
    if records or checkpoint:
        detail = f"{len(records)} shard(s) committed" if records else f"checkpoint at step {checkpoint[0]}"
        return StageStatus(label, ref, "partial", detail)
    return StageStatus(label, ref, "missing", "")


def pipeline_status(config: PipelineConfig) -> list[StageStatus]:
    """The status of every planned output of `config`, in pipeline order (each backbone's in turn,
    labelled with it when there are several)."""
    store = ArtifactStore(config.store_root())
    backbones = config.backbone_configs()
    return [stage_status(store, label if len(backbones) == 1 else f"{label} [{model}]", ref)
            for model, one in backbones.items() for label, ref in plan_pipeline(one).outputs()]
