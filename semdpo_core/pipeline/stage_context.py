"""What a stage's computation receives and returns.

A content-addressed pipeline silently reuses a stale result when a stage reads a setting that
its fingerprint does not hash. So a stage never sees the config: the stage table
(`semdpo_core/pipeline/stage_table.py`) declares the settings each stage depends on, the plan hashes
exactly those into the fingerprint, and the computation gets them as a read-only `Settings` view, in
which any other name is an error. What changes how a stage runs but never what it writes (the
device, the store, the runner, `render.compile`, and how training checkpoints and logs:
`train.checkpoint_every`, `keep_checkpoints`, `report_to`, `logging_dir`) comes apart, as the `Runtime`.

A computation is `compute(ctx) -> Output` (a whole dataset at once) or `compute(ctx, shard) ->
pa.Table` (one shard's rows). `ctx` (`StageContext`) holds the stage's `Settings`, the `Runtime`,
the store, the dataset it writes and the datasets it reads, by the role the stage table gives them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import torch

from semdpo_core.models.loading import resolve_device
from semdpo_core.models.locate import model_cache_dir
from semdpo_core.preference.methods import Method
from semdpo_core.store.artifact_store import ArtifactStore, DatasetRef, open_store


class SettingNotHashed(AttributeError, KeyError):
    """A stage read a setting that its fingerprint does not hash."""


@dataclass(frozen=True)
class Source:
    """An input file (or built-in dataset) that a stage reads: the stage reads `path`, its
    fingerprint hashes `digest` (the bytes), so moving a file reuses, editing it reruns."""

    path: str
    digest: str

    def __str__(self) -> str:  # what `store.fingerprint` hashes (json.dumps default=str)
        return self.digest


class Settings(Mapping[str, Any]):
    """A read-only view of one stage's hashed settings, by attribute or by key; nested
    sections are views too. Reading a name the stage did not declare raises SettingNotHashed."""

    def __init__(self, stage: str, values: Mapping[str, Any], path: str = ""):
        shadowed = sorted(set(values) & set(dir(Settings)))
        if shadowed:  # `settings.keys` would be Mapping's method, not the setting
            raise ValueError(f"stage {stage!r}: settings {shadowed} shadow the Settings view's own names; rename them")
        self._stage, self._values, self._path = stage, dict(values), path

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]

    def __getitem__(self, name: str) -> Any:
        if name not in self._values:
            raise SettingNotHashed(
                f"stage {self._stage!r} read setting {self._path}{name!r}, which its fingerprint does not hash; "
                f"declare it in the stage's settings in semdpo_core/pipeline/stage_table.py "
                f"(it has {sorted(self._values)})"
            )
        value = self._values[name]
        if isinstance(value, Mapping):
            return Settings(self._stage, value, f"{self._path}{name}.")
        return tuple(value) if isinstance(value, list) else value  # read-only, as the rest of the view

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Settings({self._stage!r}, {self._values!r})"

    def __reduce__(self) -> tuple[Any, ...]:  # pickled for Ray workers; __getattr__ must not see a half-built view
        return Settings, (self._stage, self._values, self._path)

    def to_dict(self) -> dict[str, Any]:
        """The plain values (nested sections as dicts): what the fingerprint hashes."""
        return dict(self._values)


@dataclass(frozen=True)
class Runtime:
    """The settings a stage reads that no fingerprint hashes: how it runs, never what it writes."""

    device: str = "auto"  # config.device
    store: str = ""  # the store root
    compile_unet: bool = False  # render.compile
    checkpoint_every: int = 0  # train.checkpoint_every
    keep_checkpoints: int = 2  # train.keep_checkpoints
    report_to: tuple[str, ...] = ()  # train.report_to
    logging_dir: str = ""  # train.logging_dir, resolved


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


@dataclass(frozen=True)
class Output:
    """An unsharded stage's result: its rows, files beside them (checkpoints, report files) and meta."""

    table: pa.Table
    files: dict[str, bytes] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
