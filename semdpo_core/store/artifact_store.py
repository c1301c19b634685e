"""The artifact store: content-addressed stage outputs, committed by a manifest written last.

Layout (DESIGN.md):
    <root>/<stage>/<fingerprint>/part-00000.parquet ...   table parts, one per shard
    <root>/<stage>/<fingerprint>/_shards/part-00000.json   a shard's commit record (rows, checksums)
    <root>/<stage>/<fingerprint>/files/...                other files (checkpoints)
    <root>/<stage>/<fingerprint>/_manifest.json           the commit point of the whole dataset
    <root>/runs/<run-id>/run.json                         which fingerprint each stage of a run used

A part is written under its final key in one step, then its shard record; a shard is done when
its record exists and the part's bytes match it. The manifest is written last: a dataset
without one does not exist for readers, and every read checks the bytes against it.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from semdpo_core.pipeline.schemas import SCHEMA_VERSION, conform, select_fields
from semdpo_core.store.atomic_files import temporary_is_stale
from semdpo_core.store.backends import (
    Backend,
    KeyMissing,
    LocalBackend,
    digests,
    open_backend,
)

log = logging.getLogger("semdpo.store")

MANIFEST = "_manifest.json"


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
        {"stage": stage, "schema_version": SCHEMA_VERSION, "settings": settings, "inputs": [str(r) for r in inputs]},
        sort_keys=True,
        default=str,
    )
    return DatasetRef(stage, hashlib.sha256(payload.encode()).hexdigest()[:16])


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


class DatasetMissing(FileNotFoundError):
    """A dataset that was never committed (no manifest)."""


class CorruptArtifact(ValueError):
    """Bytes that do not match what the manifest recorded."""


class ArtifactStore:
    """Datasets of Parquet parts and files, addressed by DatasetRef, on one backend."""

    def __init__(self, root: str):
        self.root = root
        self.backend: Backend = open_backend(root)

    # -- state -------------------------------------------------------------------------------
    def is_committed(self, ref: DatasetRef) -> bool:
        return self.backend.exists(f"{ref.prefix}/{MANIFEST}")

    def manifest(self, ref: DatasetRef) -> dict[str, Any]:
        key = f"{ref.prefix}/{MANIFEST}"
        try:
            manifest = json.loads(self.backend.read_bytes(key))
        except KeyMissing:
            raise DatasetMissing(
                f"dataset {ref} has no manifest at {self.backend.describe(key)}: its stage never finished; "
                "rerun the pipeline to produce it"
            ) from None
        except ValueError as e:  # truncated or overwritten bytes (json.JSONDecodeError, UnicodeDecodeError)
            raise CorruptArtifact(
                f"{self.backend.describe(key)} is damaged ({e}): a rerun of the pipeline withdraws it and "
                "recomputes the stage, reusing its intact shards"
            ) from None
        if not isinstance(manifest, dict) or not {"parts", "files", "rows"} <= manifest.keys():
            raise CorruptArtifact(f"{self.backend.describe(key)} is damaged (not a manifest): a rerun withdraws it")
        return manifest

    def manifest_is_damaged(self, ref: DatasetRef) -> bool:
        """A manifest that exists but cannot be read as one (so the dataset cannot be trusted)."""
        try:
            self.manifest(ref)
        except CorruptArtifact:
            return True
        return False

    def shard_record(self, ref: DatasetRef, index: int) -> dict[str, Any] | None:
        """A shard's commit record; None when there is none, or when it is damaged (the shard reruns)."""
        key = f"{ref.prefix}/_shards/{part_name(index)}.json"
        try:
            record = json.loads(self.backend.read_bytes(key))
        except KeyMissing:
            return None
        except ValueError:
            log.warning("%s is damaged: shard %d of %s will be recomputed", self.backend.describe(key), index, ref)
            return None
        return record if isinstance(record, dict) and {"name", "rows", "sha256", "md5"} <= record.keys() else None

    def shard_is_done(self, ref: DatasetRef, index: int) -> bool:
        """The shard's part is committed and its bytes still match its record."""
        record = self.shard_record(ref, index)
        return record is not None and self.backend.matches(f"{ref.prefix}/{record['name']}", record["sha256"],
                                                           record["md5"])

    def invalid_entries(self, ref: DatasetRef) -> list[str]:
        """Parts and files of a committed dataset whose bytes no longer match the manifest (the
        manifest itself when it is damaged)."""
        if self.manifest_is_damaged(ref):
            return [MANIFEST]
        manifest = self.manifest(ref)
        bad = [p["name"] for p in manifest["parts"]
               if not self.backend.matches(f"{ref.prefix}/{p['name']}", p["sha256"], p["md5"])]
        bad += [f"files/{f['name']}" for f in manifest["files"]
                if not self.backend.matches(f"{ref.prefix}/files/{f['name']}", f["sha256"], f["md5"])]
        return bad

    def check(self, ref: DatasetRef) -> str:
        """"done" when `ref` is committed and intact, "damaged" when it was committed but some of it
        no longer matches (it is withdrawn: its damaged shards are recomputed, its intact ones
        reused), else "missing". Temporary files that a writer now gone left under it are removed."""
        stale = self.remove_temporaries(ref.prefix)
        if stale:
            log.info("%s: removed %d temporary file(s) a killed writer left (%s)", ref, len(stale), stale[0])
        if not self.is_committed(ref):
            return "missing"
        bad = self.invalid_entries(ref)
        if not bad:
            return "done"
        log.warning("%s: %d damaged entr%s (%s): withdrawn, will be recomputed",
                    ref, len(bad), "y" if len(bad) == 1 else "ies", ", ".join(bad[:5]))
        self.uncommit(ref, bad)
        return "damaged"

    def uncommit(self, ref: DatasetRef, bad: list[str]) -> None:
        """Withdraw a dataset with damaged entries: its manifest and the damaged shards' records go."""
        self.backend.delete(f"{ref.prefix}/{MANIFEST}")
        for name in bad:
            if name.startswith("part-"):
                self.backend.delete(f"{ref.prefix}/_shards/{name}.json")

    # -- reading -----------------------------------------------------------------------------
    def read_table(self, ref: DatasetRef, schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
        """All parts of a committed dataset, each checked against its checksum and the schema;
        `columns` decodes only those (the evaluation's scores without its images)."""
        manifest = self.manifest(ref)
        schema = select_fields(schema, columns)
        tables = [self._read_part(ref, part, schema) for part in manifest["parts"]]
        return pa.concat_tables(tables) if tables else schema.empty_table()

    def read_rows(self, ref: DatasetRef, schema: pa.Schema, start: int, count: int) -> pa.Table:
        """Rows [start, start + count) of a committed dataset, reading only the parts that hold them."""
        tables, offset = [], 0
        for part in self.manifest(ref)["parts"]:
            first, last = max(start, offset), min(start + count, offset + part["rows"])
            if first < last:
                tables.append(self._read_part(ref, part, schema).slice(first - offset, last - first))
            offset += part["rows"]
        return pa.concat_tables(tables) if tables else schema.empty_table()

    def read_part(self, ref: DatasetRef, index: int, schema: pa.Schema) -> pa.Table:
        """Part `index` of a committed dataset (the input of shard `index` downstream)."""
        return self._read_part(ref, self.manifest(ref)["parts"][index], schema)

    def read_shard(self, ref: DatasetRef, index: int, schema: pa.Schema) -> pa.Table:
        """Shard `index`'s part as its own record committed it, before the dataset's manifest exists."""
        record = self.shard_record(ref, index)
        if record is None:
            raise DatasetMissing(f"shard {index} of {ref} was never committed; rerun to compute it")
        return self._read_part(ref, record, schema)

    def num_parts(self, ref: DatasetRef) -> int:
        return len(self.manifest(ref)["parts"])

    def _read_part(self, ref: DatasetRef, part: dict[str, Any], schema: pa.Schema) -> pa.Table:
        key = f"{ref.prefix}/{part['name']}"
        data = self.backend.read_bytes(key)
        if digests(data)["sha256"] != part["sha256"]:
            raise CorruptArtifact(
                f"{self.backend.describe(key)}: checksum does not match the manifest; "
                "rerun the pipeline to recompute it"
            )
        try:
            parquet = pq.ParquetFile(io.BytesIO(data))
            table = parquet.read(columns=[c for c in schema.names if c in parquet.schema_arrow.names])
        except (pa.ArrowInvalid, OSError) as e:
            raise CorruptArtifact(f"{self.backend.describe(key)}: not a readable Parquet file ({e})") from None
        return conform(table, schema, self.backend.describe(key))

    def read_file(self, ref: DatasetRef, name: str) -> bytes:
        entry = {f["name"]: f for f in self.manifest(ref)["files"]}.get(name)
        if entry is None:
            raise DatasetMissing(f"dataset {ref} has no file {name!r}")
        key = f"{ref.prefix}/files/{name}"
        data = self.backend.read_bytes(key)
        if digests(data)["sha256"] != entry["sha256"]:
            raise CorruptArtifact(f"{self.backend.describe(key)}: checksum does not match the manifest")
        return data

    def file_url(self, ref: DatasetRef, name: str) -> str:
        """Where a dataset file lives, as a link: s3://bucket/key, or a file:// URL here."""
        where = self.backend.describe(f"{ref.prefix}/files/{name}")
        return where if "://" in where else Path(where).resolve().as_uri()

    def materialize(self, ref: DatasetRef, cache_dir: Path) -> Path:
        """A local directory holding the dataset's files (checkpoints for `from_pretrained`)."""
        manifest = self.manifest(ref)
        if isinstance(self.backend, LocalBackend):  # already on this machine: no copy
            return self.backend.path(f"{ref.prefix}/files")
        target = cache_dir / ref.stage / ref.fingerprint
        if (target / MANIFEST).is_file() and json.loads((target / MANIFEST).read_text()) == manifest:
            return target
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".materialize-"))
        for entry in manifest["files"]:
            dest = tmp / entry["name"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(self.read_file(ref, entry["name"]))
        (tmp / MANIFEST).write_text(json.dumps(manifest))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:  # another process materialized it first
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    # -- writing -----------------------------------------------------------------------------
    def write_part(self, ref: DatasetRef, index: int, table: pa.Table, schema: pa.Schema) -> dict[str, Any]:
        """Commit one shard: its part under the final key, then its record."""
        name = part_name(index)
        table = conform(table, schema, f"{ref}/{name}")
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        data = buffer.getvalue()
        self.backend.write_bytes(f"{ref.prefix}/{name}", data)
        record = {"name": name, "rows": table.num_rows, "bytes": len(data), **digests(data)}
        self.backend.write_bytes(f"{ref.prefix}/_shards/{name}.json", json.dumps(record, sort_keys=True).encode())
        return record

    def commit(
        self,
        ref: DatasetRef,
        schema: pa.Schema,
        num_parts: int,
        files: dict[str, bytes] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> DatasetRef:
        """Write files, then the manifest over parts 0..num_parts-1: the dataset exists from here on."""
        parts = []
        for index in range(num_parts):
            record = self.shard_record(ref, index)
            if record is None:
                raise DatasetMissing(f"cannot commit {ref}: shard {index} of {num_parts} was never written")
            parts.append(record)
        file_entries = []
        for name, data in sorted((files or {}).items()):
            self.backend.write_bytes(f"{ref.prefix}/files/{name}", data)
            file_entries.append({"name": name, "bytes": len(data), **digests(data)})
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

    def write_dataset(
        self,
        ref: DatasetRef,
        schema: pa.Schema,
        tables: list[pa.Table] | pa.Table,
        files: dict[str, bytes] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> DatasetRef:
        """An unsharded dataset in one go: its parts, then the manifest."""
        tables = [tables] if isinstance(tables, pa.Table) else tables
        for index, table in enumerate(tables):
            self.write_part(ref, index, table, schema)
        return self.commit(ref, schema, len(tables), files=files, meta=meta)

    # -- runs and checkpoints ----------------------------------------------------------------
    def write_run(self, run_id: str, record: dict[str, Any]) -> str:
        key = f"runs/{run_id}/run.json"
        self.backend.write_bytes(key, json.dumps(record, indent=2, sort_keys=True).encode())
        return self.backend.describe(key)

    def write_checkpoint(self, ref: DatasetRef, step: int, files: dict[str, bytes]) -> str:
        """A training checkpoint: its files, then its index (written last, the checkpoint's commit point)."""
        base = f"{ref.prefix}/_checkpoints/step-{step:09d}"
        entries = []
        for name, data in sorted(files.items()):
            self.backend.write_bytes(f"{base}/{name}", data)
            entries.append({"name": name, **digests(data)})
        self.backend.write_bytes(f"{base}/_index.json", json.dumps({"step": step, "files": entries}).encode())
        return self.backend.describe(base)

    def checkpoint_steps(self, ref: DatasetRef) -> dict[int, bool]:
        """Every checkpoint folder of a training run: {step: complete (its index was written)}."""
        steps: dict[int, bool] = {}
        for key in self.backend.list(f"{ref.prefix}/_checkpoints/"):
            folder, _, name = key.removeprefix(f"{ref.prefix}/_checkpoints/").partition("/")
            if folder.startswith("step-") and folder[5:].isdigit():
                step = int(folder[5:])
                steps[step] = steps.get(step, False) or name == "_index.json"
        return steps

    def delete_checkpoint(self, ref: DatasetRef, step: int) -> None:
        """Remove one checkpoint: its index first, so that a half-deleted one is never read as complete."""
        base = f"{ref.prefix}/_checkpoints/step-{step:09d}"
        self.backend.delete(f"{base}/_index.json")
        for key in self.backend.list(f"{base}/"):
            self.backend.delete(key)

    def prune_checkpoints(self, ref: DatasetRef, keep: int) -> list[int]:
        """Keep the newest `keep` complete checkpoints of a run; older ones and incomplete ones
        older than the newest complete one (a killed write) are deleted. Returns the steps removed."""
        steps = self.checkpoint_steps(ref)
        complete = sorted((s for s, ok in steps.items() if ok), reverse=True)
        kept = set(complete[:keep])
        newest = complete[0] if complete else -1
        removed = sorted(s for s, ok in steps.items() if s not in kept and (ok or s < newest))
        for step in removed:
            self.delete_checkpoint(ref, step)
        return removed

    def temporaries(self, prefix: str) -> dict[str, int]:
        """The temporary files a killed writer left under `prefix`: {key: bytes}; a live writer's
        are not listed. Local stores only: an S3 object is written in one PUT and leaves none."""
        if not isinstance(self.backend, LocalBackend):
            return {}
        base = self.backend.path(prefix)
        found = sorted(p for p in base.rglob(".*.tmp") if p.is_file()) if base.is_dir() else []
        return {str(p.relative_to(self.backend.root)): p.stat().st_size for p in found if temporary_is_stale(p)}

    def remove_temporaries(self, prefix: str) -> list[str]:
        """Delete the temporaries of writers that are gone under `prefix`."""
        stale = list(self.temporaries(prefix))
        for key in stale:
            self.backend.delete(key)
        return stale

    def latest_checkpoint(self, ref: DatasetRef) -> tuple[int, dict[str, bytes]] | None:
        """The newest complete, intact checkpoint of a training run, or None."""
        indexes = [k for k in self.backend.list(f"{ref.prefix}/_checkpoints/") if k.endswith("/_index.json")]
        for key in sorted(indexes, reverse=True):
            try:
                index = json.loads(self.backend.read_bytes(key))
            except (KeyMissing, ValueError):  # deleted meanwhile, or damaged: try the next older one
                continue
            base = key.removesuffix("/_index.json")
            files = {}
            for entry in index["files"]:
                try:
                    data = self.backend.read_bytes(f"{base}/{entry['name']}")
                except KeyMissing:
                    break
                if digests(data)["sha256"] != entry["sha256"]:
                    break
                files[entry["name"]] = data
            else:
                return index["step"], files
        return None


@functools.lru_cache(maxsize=4)
def open_store(root: str) -> ArtifactStore:
    """The store at `root`, opened once per process (on S3, one client for every shard)."""
    return ArtifactStore(root)
