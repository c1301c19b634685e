"""What every stage task shares: the store, the device, reuse of finished work, cache keys, artifacts."""

from __future__ import annotations

import functools
import hashlib
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.context import TaskRunContext

from semdpo_core.config import PipelineConfig
from semdpo_core.store import ArtifactStore, DatasetRef


def open_store(config: PipelineConfig) -> ArtifactStore:
    return ArtifactStore(config.store_root())


def store_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    """The stage fingerprint (per store) when the store holds the output; else no caching.

    The store decides what is done: a Prefect cache entry alone never skips work whose
    dataset is missing, and a committed dataset shows as Cached in the UI.
    """
    config: PipelineConfig = parameters["config"]
    ref: DatasetRef = parameters["ref"]
    if not open_store(config).is_committed(ref):
        return None
    return cache_key(config, ref)


def cache_key(config: PipelineConfig, ref: DatasetRef) -> str:
    root = hashlib.sha256(config.store_root().encode()).hexdigest()[:8]
    return f"semdpo-{ref.stage}-{ref.fingerprint}-{root}"


def remember_done(config: PipelineConfig, ref: DatasetRef) -> None:
    """Record the committed output in Prefect's cache, so the next run shows this task as Cached."""
    context = TaskRunContext.get()
    if context is not None:
        context.result_store.write(ref, key=cache_key(config, ref))


def stage_task(name: str, **task_options: Any) -> Callable[[Callable[..., DatasetRef]], Any]:
    """A Prefect task for one stage step: reuses a committed output, else computes and publishes it."""

    def wrap(fn: Callable[..., DatasetRef]) -> Any:
        @functools.wraps(fn)
        def run(config: PipelineConfig, ref: DatasetRef, **inputs: Any) -> DatasetRef:
            logger = get_run_logger()
            store = open_store(config)
            if store.is_committed(ref):
                logger.info("%s: reusing %s (already in the store)", name, ref)
            else:
                logger.info("%s: computing %s", name, ref)
                fn(config, ref, **inputs)
                manifest = store.manifest(ref)
                publish_summary(ref, manifest)
                logger.info("%s: committed %s (%d rows)", name, ref, manifest["rows"])
            remember_done(config, ref)
            return ref

        return task(name=name, cache_key_fn=store_cache_key, persist_result=True, **task_options)(run)

    return wrap


def publish_summary(ref: DatasetRef, manifest: dict[str, Any]) -> None:
    """A table artifact per stage (stable key) with its rows, parts and fingerprint."""
    row = {"stage": ref.stage, "fingerprint": ref.fingerprint, "rows": manifest["rows"], "parts": len(manifest["parts"])}
    row.update({k: v for k, v in manifest.get("meta", {}).items() if isinstance(v, (int, float, str))})
    try:
        create_table_artifact(key=f"semdpo-{ref.stage.replace('_', '-')}", table=[row], description=f"{ref.stage} output {ref}")
    except Exception as e:  # an artifact is a view; its failure must not fail the stage
        logging.getLogger("semdpo").warning("could not publish the %s artifact: %s", ref.stage, e)


def checkpoint_files(model: Any, tokenizer: Any) -> dict[str, bytes]:
    """A `save_pretrained` directory as {relative path: bytes}, for the store."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        return {str(p.relative_to(tmp)): p.read_bytes() for p in sorted(Path(tmp).rglob("*")) if p.is_file()}


def checkpoint_dir(config: PipelineConfig, ref: DatasetRef) -> str:
    """A local directory with a stored checkpoint, loadable by `from_pretrained`."""
    from semdpo_core.models import model_cache_dir

    return str(open_store(config).materialize(ref, model_cache_dir() / "checkpoints"))
