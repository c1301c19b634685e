"""Sharded stages on Ray: a subflow whose task runner is prefect-ray's, one task per shard.

Each shard task asks Ray for `runner.gpus_per_shard` GPUs (on CUDA machines), so the shards of a
stage spread over every GPU of the machine or cluster. Ray reuses its worker processes, and
`inference_model` caches per process: a model loads once per worker, not once per shard.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from semdpo_core.config import PipelineConfig
from semdpo_core.store import DatasetRef


@flow(name="semdpo-shards-on-ray")
def shards_on_ray(stage: str, config: PipelineConfig, ref: DatasetRef, done: list[bool], inputs: dict[str, Any]) -> int:
    """Submit every shard of `stage` to Ray and wait for all of them; returns how many ran."""
    import torch
    from prefect_ray.context import remote_options

    from tasks.common import ShardedStage

    sharded = ShardedStage.registry[stage]
    resources = {"num_gpus": config.runner.gpus_per_shard} if torch.cuda.is_available() else {"num_cpus": 1}
    with remote_options(**resources):
        futures = [sharded.shard_task.submit(config, ref, shard=i, done=d, **inputs) for i, d in enumerate(done)]
    for future in futures:
        future.result()  # raises the first shard failure
    return sum(not d for d in done)


def connect(config: PipelineConfig) -> None:
    """Join the Ray cluster at `runner.address`, or start a local Ray instance, once per process:
    it stays up for every sharded stage of the run, and so do its workers and their models."""
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"namespace": "prefect"}
    if config.runner.address is None:
        kwargs.update(include_dashboard=False, num_cpus=config.runner.num_cpus)
    ray.init(config.runner.address, **kwargs)


def run_shards_on_ray(stage: str, config: PipelineConfig, ref: DatasetRef, done: list[bool], inputs: dict[str, Any]) -> None:
    """Run the shards of `stage` on a local Ray instance, or the cluster at `runner.address`."""
    from prefect_ray import RayTaskRunner

    connect(config)
    runner = RayTaskRunner(address=config.runner.address)
    shards_on_ray.with_options(name=f"{stage}-shards-on-ray", task_runner=runner)(stage, config, ref, done, inputs)
