"""The Prefect tasks that compute the plan's outputs, whatever the stage.

An unsharded output is one task (`compute_output`); a sharded one is a task per shard
(`compute_shard`, one Parquet part each, committed on its own) and then a commit
(`commit_shards`). Resume = rerun: the store decides what is done. Before an output runs, its
dataset is checked (`ArtifactStore.check`: a damaged one is withdrawn), and each task gets `done` from that check; a
done task shows as Cached in Prefect, and a Prefect cache entry alone never skips work the
store lacks.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from prefect import get_run_logger, task
from prefect.context import TaskRunContext

from semdpo_core.pipeline.config import RunnerConfig
from semdpo_core.pipeline.plan import Job
from semdpo_core.pipeline.stage_context import Runtime
from semdpo_core.store.artifact_store import DatasetRef, open_store
from tasks.artifacts import (
    publish_summary,
    stage_key,
    stage_progress,
    update_stage_progress,
)
from tasks.runner import run_on_ray

log = logging.getLogger("semdpo.stages")


def cache_key(runtime: Runtime, ref: DatasetRef, shard: int | None = None) -> str:
    root = hashlib.sha256(runtime.store.encode()).hexdigest()[:8]
    suffix = "" if shard is None else f"-shard{shard:05d}"
    return f"semdpo-{ref.stage}-{ref.fingerprint}{suffix}-{root}"


def done_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    """The fingerprint key when the store holds this output (`done`), else no caching."""
    if not parameters.get("done"):
        return None
    return cache_key(parameters["runtime"], parameters["job"].ref, parameters.get("shard"))


def remember_done(runtime: Runtime, ref: DatasetRef, shard: int | None = None) -> None:
    """Record a committed output in Prefect's cache, so the next run shows this task as Cached."""
    context = TaskRunContext.get()
    if context is not None:
        context.result_store.write(ref, key=cache_key(runtime, ref, shard))


def run_state(check: str, reused_work: int | bool = 0) -> str:
    """What a run did to an output, for its record: reused, recomputed (it was in the store,
    damaged), resumed (some shards or a training checkpoint were there) or computed."""
    if check == "done":
        return "reused"
    if check == "damaged":
        return "recomputed"
    return "resumed" if reused_work else "computed"


@task(cache_key_fn=done_cache_key, persist_result=True)
def compute_output(job: Job, runtime: Runtime, done: bool) -> DatasetRef:
    """An unsharded output: compute it whole and commit it, unless the store has it."""
    logger = get_run_logger()
    if done:
        logger.info("%s: reusing %s (already in the store)", job.label, job.ref)
    else:
        logger.info("%s: computing %s", job.label, job.ref)
        out = job.stage.compute(job.context(runtime))
        store = open_store(runtime.store)
        store.write_dataset(job.ref, job.stage.schema, out.table, files=out.files, meta=out.meta)
        publish_summary(job.ref, store.manifest(job.ref), stage_key(job.task_name))
    remember_done(runtime, job.ref)
    return job.ref


@task(cache_key_fn=done_cache_key, persist_result=True)
def compute_shard(job: Job, runtime: Runtime, shard: int, done: bool) -> DatasetRef:
    """One shard of a sharded output: its rows, committed as one part with its record."""
    if not done:
        table = job.stage.compute(job.context(runtime), shard)
        open_store(runtime.store).write_part(job.ref, shard, table, job.stage.schema)
    remember_done(runtime, job.ref, shard)
    return job.ref


@task(cache_key_fn=done_cache_key, persist_result=True)
def commit_shards(job: Job, runtime: Runtime, num_shards: int, done: bool) -> DatasetRef:
    """The manifest over every shard's part: from here on the output exists."""
    if not done:
        store = open_store(runtime.store)
        store.commit(job.ref, job.stage.schema, num_shards, meta={"shards": num_shards})
        publish_summary(job.ref, store.manifest(job.ref), stage_key(job.stage.name))
    remember_done(runtime, job.ref)
    return job.ref


def run_sharded(job: Job, runtime: Runtime, runner: RunnerConfig) -> str:
    """Every shard of `job` not yet done (on Ray, all at once), then the commit; logs how many
    were reused. Returns the output's run state."""
    store = open_store(runtime.store)
    check = store.check(job.ref)
    committed = check == "done"
    num_shards = job.stage.shards(job.context(runtime))
    done = [committed or store.shard_is_done(job.ref, i) for i in range(num_shards)]
    name = job.stage.name
    log.info("%s %s: %d shards, %d reused, %d to compute", name, job.ref, num_shards, sum(done), num_shards - sum(done))
    progress = stage_progress(name, sum(done), num_shards)
    shard_task = compute_shard.with_options(name=name, task_run_name=f"{name}-{{shard}}")
    calls = [dict(job=job, runtime=runtime, shard=i, done=d) for i, d in enumerate(done)]
    for call in calls:
        if call["done"]:
            shard_task(**call)  # reused: shown as Cached, nothing to place on a GPU
    todo = [call for call in calls if not call["done"]]
    if runner.kind == "ray" and todo:
        run_on_ray(f"{name}-shards-on-ray", [(shard_task, call) for call in todo], runner)
        update_stage_progress(progress, name, num_shards, num_shards)
    else:
        for finished, call in enumerate(todo, start=sum(done) + 1):
            shard_task(**call)
            update_stage_progress(progress, name, finished, num_shards)
            log.info("%s: shard %d of %d committed", name, finished, num_shards)
    commit_shards.with_options(name=f"{name}-commit")(job, runtime, num_shards=num_shards, done=committed)
    log.info("%s %s: committed; shards reused %d, computed %d", name, job.ref, sum(done), num_shards - sum(done))
    return run_state(check, 0 if committed else sum(done))


def run_jobs(jobs: list[Job], runtime: Runtime, runner: RunnerConfig) -> dict[str, str]:
    """A stage's outputs: sharded ones shard by shard; unsharded ones one task each. The outputs
    of a stage declared `concurrent` (the training runs) that are not done yet run at once on
    Ray, one GPU each; otherwise one after another. Returns {job label: run state}."""
    states = {job.label: run_sharded(job, runtime, runner) for job in jobs if job.stage.shards is not None}
    store = open_store(runtime.store)
    unsharded = [job for job in jobs if job.stage.shards is None]
    checks = {job.label: store.check(job.ref) for job in unsharded}
    # a checkpoint there before the run: it resumes (asked now, since every run leaves its last ones)
    resumed = {job.label: any(store.checkpoint_steps(job.ref).values())
               for job in unsharded if checks[job.label] != "done"}
    submissions = [(compute_output.with_options(name=job.task_name),
                    dict(job=job, runtime=runtime, done=checks[job.label] == "done")) for job in unsharded]
    todo = [(task, arguments) for task, arguments in submissions if not arguments["done"]]
    if runner.kind == "ray" and todo and jobs[0].stage.concurrent:  # a stage's jobs share their stage
        for task, arguments in submissions:
            if arguments["done"]:
                task(**arguments)
        run_on_ray(f"{jobs[0].stage.name}-runs-on-ray", todo, runner)
    else:
        for task, arguments in submissions:
            task(**arguments)
    return states | {label: run_state(check, resumed.get(label, False)) for label, check in checks.items()}
