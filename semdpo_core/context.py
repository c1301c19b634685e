"""What a stage's computation receives and returns.

A computation is `compute(ctx) -> Output` (a whole dataset at once) or `compute(ctx, shard) ->
pa.Table` (one shard's rows). `ctx` holds the stage's hashed settings, the runtime, the store, the
dataset it writes and the datasets it reads, by the role the stage table gives them. It never
holds the config (see semdpo_core/settings.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import torch

from semdpo_core.hub import model_cache_dir
from semdpo_core.methods import Method
from semdpo_core.models import resolve_device
from semdpo_core.settings import Runtime, Settings
from semdpo_core.store import ArtifactStore, DatasetRef


@dataclass(frozen=True)
class StageContext:
    """One stage output's computation: its settings, where it runs, what it reads and writes."""

    settings: Settings
    runtime: Runtime
    ref: DatasetRef
    inputs: dict[str, DatasetRef]
    method: Method | None = None  # a training run's method entry, carried to the worker (a plugin's too)

    @property
    def store(self) -> ArtifactStore:
        return open_store(self.runtime.store)

    @property
    def device(self) -> torch.device:
        return resolve_device(self.runtime.device)

    def checkpoint_dir(self, role: str) -> str:
        """A local folder holding input `role`'s stored checkpoint, for `from_pretrained`."""
        return str(self.store.materialize(self.inputs[role], model_cache_dir() / "checkpoints"))


@functools.lru_cache(maxsize=4)
def open_store(root: str) -> ArtifactStore:
    """The store at `root`, opened once per process (on S3, one client for every shard)."""
    return ArtifactStore(root)


@dataclass(frozen=True)
class Output:
    """An unsharded stage's result: its rows, files beside them (checkpoints, report files) and meta."""

    table: pa.Table
    files: dict[str, bytes] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
