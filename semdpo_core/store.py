"""The artifact store: content-addressed stage outputs, committed by a manifest written last.

Layout (DESIGN.md):
    <root>/<stage>/<fingerprint>/part-00000.parquet ...   table parts
    <root>/<stage>/<fingerprint>/files/...                other files (checkpoints)
    <root>/<stage>/<fingerprint>/_manifest.json           the commit point
    <root>/runs/<run-id>/run.json                         which fingerprint each stage used

A dataset without a manifest does not exist for readers. Every object is written under a
temporary name and moved into place, so a crash never leaves a half-written file under a
final key. Backends hold bytes under keys; everything else lives here, above them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from semdpo_core.schemas import SCHEMA_VERSION, conform

MANIFEST = "_manifest.json"


class Backend(Protocol):
    """Bytes under keys. Writes are atomic: a key holds either nothing or all of its bytes."""

    def read_bytes(self, key: str) -> bytes: ...
    def write_bytes(self, key: str, data: bytes) -> None: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> list[str]: ...
    def describe(self, key: str) -> str: ...


class LocalBackend:
    """A directory on this machine (the default: no server needed)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()

    def path(self, key: str) -> Path:
        return self.root / key

    def read_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def write_bytes(self, key: str, data: bytes) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self.path(prefix)
        if not base.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file() and not p.name.startswith(".")
        )

    def describe(self, key: str) -> str:
        return str(self.path(key))


def open_backend(root: str) -> Backend:
    """The backend for a store root: a local directory (S3 arrives with its own issue)."""
    if "://" in root and not root.startswith("file://"):
        raise ValueError(f"store {root!r}: only local directories are supported so far")
    return LocalBackend(root.removeprefix("file://"))


@dataclass(frozen=True)
class DatasetRef:
    """Where one stage output lives: its stage and fingerprint."""

    stage: str
    fingerprint: str

    @property
    def prefix(self) -> str:
        return f"{self.stage}/{self.fingerprint}"

    def __str__(self) -> str:
        return self.prefix


def fingerprint(stage: str, settings: Any, inputs: list[DatasetRef] | tuple[DatasetRef, ...] = ()) -> DatasetRef:
    """Hash of stage name, its settings, its inputs' fingerprints and the schema version."""
    payload = json.dumps(
        {
            "stage": stage,
            "schema_version": SCHEMA_VERSION,
            "settings": settings,
            "inputs": [str(ref) for ref in inputs],
        },
        sort_keys=True,
        default=str,
    )
    return DatasetRef(stage, hashlib.sha256(payload.encode()).hexdigest()[:16])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class DatasetMissing(FileNotFoundError):
    """A dataset that was never committed (no manifest)."""


class CorruptArtifact(ValueError):
    """Bytes that do not match what the manifest recorded."""


class ArtifactStore:
    """Datasets of Parquet parts and files, addressed by DatasetRef, on one backend."""

    def __init__(self, root: str):
        self.root = root
        self.backend = open_backend(root)

    # -- reading -----------------------------------------------------------------------------
    def is_committed(self, ref: DatasetRef) -> bool:
        return self.backend.exists(f"{ref.prefix}/{MANIFEST}")

    def manifest(self, ref: DatasetRef) -> dict[str, Any]:
        key = f"{ref.prefix}/{MANIFEST}"
        if not self.backend.exists(key):
            raise DatasetMissing(
                f"dataset {ref} has no manifest at {self.backend.describe(key)}: its stage never finished; "
                "rerun the pipeline to produce it"
            )
        return json.loads(self.backend.read_bytes(key))

    def read_table(self, ref: DatasetRef, schema: pa.Schema) -> pa.Table:
        """All parts of a committed dataset, each checked against its checksum and the schema."""
        manifest = self.manifest(ref)
        tables = [self._read_part(ref, part, schema) for part in manifest["parts"]]
        if not tables:
            return schema.empty_table()
        return pa.concat_tables(tables)

    def _read_part(self, ref: DatasetRef, part: dict[str, Any], schema: pa.Schema) -> pa.Table:
        key = f"{ref.prefix}/{part['name']}"
        data = self.backend.read_bytes(key)
        if sha256(data) != part["sha256"]:
            raise CorruptArtifact(f"{self.backend.describe(key)}: checksum does not match the manifest")
        try:
            table = pq.read_table(io.BytesIO(data))
        except (pa.ArrowInvalid, OSError) as e:
            raise CorruptArtifact(f"{self.backend.describe(key)}: not a readable Parquet file ({e})") from None
        return conform(table, schema, self.backend.describe(key))

    def read_file(self, ref: DatasetRef, name: str) -> bytes:
        entry = {f["name"]: f for f in self.manifest(ref)["files"]}.get(name)
        if entry is None:
            raise DatasetMissing(f"dataset {ref} has no file {name!r}")
        data = self.backend.read_bytes(f"{ref.prefix}/files/{name}")
        if sha256(data) != entry["sha256"]:
            raise CorruptArtifact(f"{self.backend.describe(f'{ref.prefix}/files/{name}')}: checksum mismatch")
        return data

    def materialize(self, ref: DatasetRef, cache_dir: Path) -> Path:
        """A local directory holding the dataset's files (checkpoints for `from_pretrained`)."""
        manifest = self.manifest(ref)
        if isinstance(self.backend, LocalBackend):  # already on this machine: no copy
            return self.backend.path(f"{ref.prefix}/files")
        target = cache_dir / ref.stage / ref.fingerprint
        if (target / MANIFEST).is_file():
            return target
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".materialize-"))
        for entry in manifest["files"]:
            dest = tmp / entry["name"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(self.read_file(ref, entry["name"]))
        (tmp / MANIFEST).write_text(json.dumps(manifest))
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            tmp.rename(target)
        except OSError:  # another process materialized it first
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    # -- writing -----------------------------------------------------------------------------
    def write_dataset(
        self,
        ref: DatasetRef,
        schema: pa.Schema,
        tables: list[pa.Table] | pa.Table,
        files: dict[str, bytes] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> DatasetRef:
        """Write parts and files, then the manifest: the dataset exists only once all are in place."""
        if isinstance(tables, pa.Table):
            tables = [tables]
        parts = [self._write_part(ref, i, table, schema) for i, table in enumerate(tables)]
        file_entries = []
        for name, data in sorted((files or {}).items()):
            self.backend.write_bytes(f"{ref.prefix}/files/{name}", data)
            file_entries.append({"name": name, "bytes": len(data), "sha256": sha256(data)})
        manifest = {
            "stage": ref.stage,
            "fingerprint": ref.fingerprint,
            "schema_version": SCHEMA_VERSION,
            "schema": schema.to_string(show_schema_metadata=False),
            "rows": sum(p["rows"] for p in parts),
            "parts": parts,
            "files": file_entries,
            "meta": meta or {},
        }
        self.backend.write_bytes(f"{ref.prefix}/{MANIFEST}", json.dumps(manifest, indent=2, sort_keys=True).encode())
        return ref

    def _write_part(self, ref: DatasetRef, index: int, table: pa.Table, schema: pa.Schema) -> dict[str, Any]:
        name = f"part-{index:05d}.parquet"
        table = conform(table, schema, f"{ref}/{name}")
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        data = buffer.getvalue()
        self.backend.write_bytes(f"{ref.prefix}/{name}", data)
        return {"name": name, "rows": table.num_rows, "bytes": len(data), "sha256": sha256(data)}

    def write_run(self, run_id: str, record: dict[str, Any]) -> str:
        key = f"runs/{run_id}/run.json"
        self.backend.write_bytes(key, json.dumps(record, indent=2, sort_keys=True).encode())
        return self.backend.describe(key)
