"""Tasks on Ray: a subflow whose task runner is prefect-ray's, one Ray task per Prefect task.

Each task asks Ray for `runner.gpus_per_shard` GPUs (on CUDA machines), so the shards of a
stage, and the training runs of the train stage, spread over every GPU of the machine or
cluster. Ray reuses its worker processes, and `semdpo_core.models.inference.loaded` caches per process:
a model loads once per worker, not once per shard.
"""

from __future__ import annotations

from typing import Any

import torch
from prefect import Task, flow

from semdpo_core.pipeline.config import RunnerConfig


@flow(name="semdpo-on-ray")
def tasks_on_ray(submissions: list[Any], resources: dict[str, float]) -> list[Any]:
    """Submit every (task, arguments) pair to Ray and wait for all of them, then raise the first
    failure (the others run to their end: a failed training run does not stop its neighbours)."""
    from prefect.futures import wait
    from prefect_ray.context import remote_options

    with remote_options(**resources):
        futures = [task.submit(**arguments) for task, arguments in submissions]
    wait(futures)
    return [future.result() for future in futures]


def connect(runner: RunnerConfig) -> None:
    """Join the Ray cluster at `runner.address`, or start a local Ray instance, once per process:
    it stays up for every stage of the run, and so do its workers and their models."""
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"namespace": "prefect"}
    if runner.address is None:
        kwargs.update(include_dashboard=False, num_cpus=runner.num_cpus)
    ray.init(runner.address, **kwargs)


def run_on_ray(name: str, submissions: list[tuple[Task, dict[str, Any]]], runner: RunnerConfig) -> list[Any]:
    """Run the tasks at once on a local Ray instance, or the cluster at `runner.address`; `name`
    names the subflow in the Prefect UI."""
    from prefect_ray import RayTaskRunner

    connect(runner)
    resources = {"num_gpus": runner.gpus_per_shard} if torch.cuda.is_available() else {"num_cpus": 1}
    return tasks_on_ray.with_options(name=name,
                                     task_runner=RayTaskRunner(address=runner.address))(submissions, resources)
