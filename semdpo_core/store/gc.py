"""What a store holds that nothing needs any more, and its removal (`semdpo gc`).

Three kinds: outputs no given config's plan references (an old fingerprint after a setting
changed), the resumable checkpoints of training runs that have committed (their final model is
in the output), and temporary files that a killed writer left. Run records are kept.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from semdpo_core.pipeline.config import PipelineConfig
from semdpo_core.pipeline.plan import plan_pipeline
from semdpo_core.store.artifact_store import ArtifactStore, DatasetRef
from semdpo_core.store.backends import LocalBackend

KEEP = ("runs", "study")  # top-level folders that are never collected (run records, studies' results)


@dataclass(frozen=True)
class Garbage:
    """One removable thing: a prefix of the store, why it can go, its size in bytes."""

    prefix: str
    reason: str
    bytes: int
    keys: tuple[str, ...]


def referenced(configs: list[PipelineConfig]) -> set[DatasetRef]:
    """Every output the configs' plans name, for each backbone a config trains (sft.backbones)."""
    return {ref for config in configs for one in config.backbone_configs().values()
            for _, ref in plan_pipeline(one).outputs()}


def find_garbage(store: ArtifactStore, configs: list[PipelineConfig]) -> list[Garbage]:
    """What `configs` (every config that uses this store) do not need, largest first."""
    keep = referenced(configs)
    outputs: dict[DatasetRef, dict[str, int]] = defaultdict(dict)
    for key, size in store.backend.sizes("").items():
        parts = key.split("/")
        if len(parts) >= 3 and parts[0] not in KEEP:
            outputs[DatasetRef(parts[0], parts[1])][key] = size
    garbage = [_garbage(ref.prefix, "no config references it", keys)
               for ref, keys in outputs.items() if ref not in keep]
    for ref in sorted(keep & outputs.keys(), key=str):
        checkpoints = {k: v for k, v in outputs[ref].items() if k.startswith(f"{ref.prefix}/_checkpoints/")}
        if checkpoints and store.is_committed(ref) and not store.invalid_entries(ref):  # intact: no retrain follows
            garbage.append(_garbage(f"{ref.prefix}/_checkpoints", "checkpoints of a finished training run",
                                    checkpoints))
    temporaries = store.temporaries("")
    if temporaries:
        garbage.append(_garbage("(temporary files)", "left by a killed writer", temporaries))
    return sorted(garbage, key=lambda g: -g.bytes)


def _garbage(prefix: str, reason: str, keys: dict[str, int]) -> Garbage:
    """One Garbage entry over `keys` ({key: bytes})."""
    return Garbage(prefix, reason, sum(keys.values()), tuple(sorted(keys)))


def remove(store: ArtifactStore, garbage: list[Garbage]) -> int:
    """Delete what `find_garbage` listed, manifests first (an output without one does not exist
    for readers, so a removal cut short never leaves a dataset that looks whole). Returns bytes freed."""
    for item in garbage:
        for key in sorted(item.keys, key=lambda k: (not k.endswith("_manifest.json"), k)):
            store.backend.delete(key)
    if isinstance(store.backend, LocalBackend):  # the folders it emptied (S3 has none)
        folders = {store.backend.path(key).parent for item in garbage for key in item.keys}
        for folder in sorted(folders, key=lambda p: -len(p.parts)):
            while folder != store.backend.root and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
                folder = folder.parent
    return sum(item.bytes for item in garbage)


def human(size: int) -> str:
    """Bytes as a short human-readable size (1.5 GB)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")
