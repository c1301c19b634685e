"""What every stage task shares: the store, reuse of finished work, cache keys, shards, artifacts.

Resume = rerun. The store decides what is done: before a stage runs, the flow checks its
dataset (and withdraws a damaged one), and each task gets `done` from that check. A done task
shows as Cached in Prefect; a Prefect cache entry alone never skips work the store lacks.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.context import TaskRunContext

from semdpo_core.config import PipelineConfig
from semdpo_core.store import ArtifactStore, DatasetRef

log = logging.getLogger("semdpo.stages")


def open_store(config: PipelineConfig) -> ArtifactStore:
    return ArtifactStore(config.store_root())


def cache_key(config: PipelineConfig, ref: DatasetRef, shard: int | None = None) -> str:
    root = hashlib.sha256(config.store_root().encode()).hexdigest()[:8]
    suffix = "" if shard is None else f"-shard{shard:05d}"
    return f"semdpo-{ref.stage}-{ref.fingerprint}{suffix}-{root}"


def done_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    """The fingerprint key when the store holds this output (`done`), else no caching."""
    if not parameters.get("done"):
        return None
    return cache_key(parameters["config"], parameters["ref"], parameters.get("shard"))


def remember_done(config: PipelineConfig, ref: DatasetRef, shard: int | None = None) -> None:
    """Record a committed output in Prefect's cache, so the next run shows this task as Cached."""
    context = TaskRunContext.get()
    if context is not None:
        context.result_store.write(ref, key=cache_key(config, ref, shard))


def check_stage(store: ArtifactStore, ref: DatasetRef) -> bool:
    """True when `ref` is committed and intact. A damaged dataset is withdrawn so that its
    damaged shards are recomputed; its intact shards stay and are reused."""
    if not store.is_committed(ref):
        return False
    bad = store.invalid_entries(ref)
    if not bad:
        return True
    log.warning("%s: %d damaged entr%s (%s): withdrawn, will be recomputed",
                ref, len(bad), "y" if len(bad) == 1 else "ies", ", ".join(bad[:5]))
    store.uncommit(ref, bad)
    return False


def artifact_key(name: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) for a stage or run name."""
    return "semdpo-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def stage_task(name: str) -> Callable[[Callable[..., DatasetRef]], Callable[..., DatasetRef]]:
    """An unsharded stage: one Prefect task that computes and commits the whole dataset."""

    def wrap(fn: Callable[..., DatasetRef]) -> Callable[..., DatasetRef]:
        @task(name=name, cache_key_fn=done_cache_key, persist_result=True)
        def run_task(config: PipelineConfig, ref: DatasetRef, done: bool, **inputs: Any) -> DatasetRef:
            logger = get_run_logger()
            task_name = TaskRunContext.get().task.name
            if done:
                logger.info("%s: reusing %s (already in the store)", task_name, ref)
            else:
                logger.info("%s: computing %s", task_name, ref)
                fn(config, ref, **inputs)
                publish_summary(ref, open_store(config).manifest(ref), artifact_key(task_name))
            remember_done(config, ref)
            return ref

        @functools.wraps(fn)
        def run(config: PipelineConfig, ref: DatasetRef, task_name: str | None = None, **inputs: Any) -> DatasetRef:
            done = check_stage(open_store(config), ref)
            return run_task.with_options(name=task_name or name)(config, ref, done=done, **inputs)

        return run

    return wrap


class ShardedStage:
    """A stage split into shards: one Prefect task and one Parquet part per shard, then a commit.

    `compute(config, shard, **inputs) -> pa.Table` produces one shard's rows. A rerun computes
    only the shards whose part is missing or damaged.
    """

    registry: dict[str, ShardedStage] = {}

    def __init__(self, name: str, schema: pa.Schema, compute: Callable[..., pa.Table]):
        self.name, self.schema, self.compute = name, schema, compute
        ShardedStage.registry[name] = self
        self.shard_task = task(
            name=name, cache_key_fn=done_cache_key, persist_result=True, task_run_name=f"{name}-{{shard}}"
        )(self._shard)
        self.commit_task = task(name=f"{name}-commit", cache_key_fn=done_cache_key, persist_result=True)(self._commit)

    def _shard(self, config: PipelineConfig, ref: DatasetRef, shard: int, done: bool, **inputs: Any) -> DatasetRef:
        if not done:
            table = self.compute(config, shard, **inputs)
            open_store(config).write_part(ref, shard, table, self.schema)
        remember_done(config, ref, shard)
        return ref

    def _commit(self, config: PipelineConfig, ref: DatasetRef, num_shards: int, done: bool) -> DatasetRef:
        if not done:
            store = open_store(config)
            store.commit(ref, self.schema, num_shards, meta={"shards": num_shards})
            publish_summary(ref, store.manifest(ref), artifact_key(self.name))
        remember_done(config, ref)
        return ref

    def __call__(self, config: PipelineConfig, ref: DatasetRef, num_shards: int, **inputs: Any) -> DatasetRef:
        """Run every shard not yet done, then commit; logs how many shards were reused."""
        store = open_store(config)
        committed = check_stage(store, ref)
        done = [committed or store.shard_is_done(ref, i) for i in range(num_shards)]
        log.info("%s %s: %d shards, %d reused, %d to compute", self.name, ref, num_shards, sum(done), num_shards - sum(done))
        progress = stage_progress(self.name, 100 * sum(done) / num_shards)
        if config.runner.kind == "ray":
            from tasks.ray_runner import run_shards_on_ray

            run_shards_on_ray(self.name, config, ref, done, inputs)
            update_stage_progress(progress, 100.0)
        else:
            finished = sum(done)
            for shard in range(num_shards):
                self.shard_task(config, ref, shard=shard, done=done[shard], **inputs)
                if not done[shard]:
                    finished += 1
                    update_stage_progress(progress, 100 * finished / num_shards)
        self.commit_task(config, ref, num_shards=num_shards, done=committed)
        log.info("%s %s: committed; shards reused %d, computed %d", self.name, ref, sum(done), num_shards - sum(done))
        return ref


def stage_progress(name: str, percent: float) -> Any:
    """A progress artifact for a sharded stage (shown in the Prefect UI); None outside a run."""
    try:
        return create_progress_artifact(progress=percent, key=artifact_key(f"{name}-progress"),
                                        description=f"{name}: shards committed")
    except Exception as e:  # a view only: never fail the stage for it
        log.debug("no progress artifact for %s: %s", name, e)
        return None


def update_stage_progress(artifact_id: Any, percent: float) -> None:
    if artifact_id is not None:
        try:
            update_progress_artifact(artifact_id=artifact_id, progress=percent)
        except Exception as e:
            log.debug("progress artifact not updated: %s", e)


def publish_summary(ref: DatasetRef, manifest: dict[str, Any], key: str) -> None:
    """A table artifact per stage or training run (stable key) with its rows, parts and fingerprint."""
    row = {"stage": ref.stage, "fingerprint": ref.fingerprint, "rows": manifest["rows"], "parts": len(manifest["parts"])}
    row.update({k: v for k, v in manifest.get("meta", {}).items() if isinstance(v, (int, float, str))})
    try:
        create_table_artifact(key=key, table=[row], description=f"{ref.stage} output {ref}")
    except Exception as e:  # an artifact is a view; its failure must not fail the stage
        log.warning("could not publish the %s artifact: %s", ref.stage, e)


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


@functools.lru_cache(maxsize=8)  # a stage uses at most a rewriter, SD, its scorers (four) and the text encoder
def inference_model(kind: str, ref: str, device: str, compile_unet: bool = False) -> Any:
    """A model for inference, loaded once per worker process and shared by its shards."""
    import torch

    from semdpo_core.models import generation_dtype, load_diffusion, load_rewriter
    from semdpo_core.scorers import load_scorer
    from semdpo_core.weigh import SemanticEncoder

    dev = torch.device(device)
    if kind == "rewriter":  # sampling rewrites: half precision on CUDA
        return load_rewriter(ref, dev, generation_dtype(dev))
    if kind == "reference":  # log-probs: fp32 weights under the training's autocast, as the policy computes them
        return load_rewriter(ref, dev)
    if kind == "diffusion":
        return load_diffusion(ref, dev, compile_unet=compile_unet)
    if kind == "encoder":
        return SemanticEncoder(ref, dev)
    if kind == "scorer":  # ref: the ScorerConfig as JSON (hashable, so the cache can key on it)
        from semdpo_core.config import ScorerConfig

        return load_scorer(ScorerConfig.model_validate_json(ref), dev)
    raise ValueError(f"unknown model kind {kind!r}")


def diffusion_model(config: Any, device: str) -> Any:
    """The render section's Stable Diffusion pipeline, loaded once per worker process."""
    return inference_model("diffusion", config.render.model, device, compile_unet=config.render.compile)


def scorer_model(config: Any, device: str) -> Any:
    """The scorer a ScorerConfig names, loaded once per worker process."""
    return inference_model("scorer", config.model_dump_json(), device)


def release_models() -> None:
    """Free the cached inference models (before training, which needs the memory)."""
    inference_model.cache_clear()
    import gc

    from semdpo_core.batching import release_cached_memory

    gc.collect()
    release_cached_memory()
