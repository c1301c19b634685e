"""A real multi-node Ray cluster on this machine (issue 26): a head and three worker nodes made the
way Ray's own tests make them (`ray.cluster_utils.Cluster`), each node with its own model cache
and temporary folder, the store on the S3 server, and `semdpo run` pointed at the head's address
as a user would. Nodes are killed in the middle of the render stage and of a training run; the
run must finish with outputs byte-identical to an undisturbed run's, no training step twice."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from semdpo_core.pipeline.config import load_config
from semdpo_core.pipeline.plan import plan_pipeline
from semdpo_core.pipeline.schemas import TRAIN_LOG
from semdpo_core.store.artifact_store import ArtifactStore
from tests.small import merged
from tests.test_ray_runner import digests, manifests
from tests.test_resume import SMALL as RESUMABLE

pytest.importorskip("ray")
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
# test_resume's run (six render shards of a few seconds each, training runs of 36 steps) with a
# checkpoint at every step: long enough that a node dies with work in flight
CONFIG = merged(RESUMABLE, {"train": {"checkpoint_every": 1}, "device": "cpu"})
IDLE = ("ray::IDLE", "ray::DashboardAgent", "ray::RuntimeEnvAgent")


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """os.environ with `values` set, for the processes started inside (a node inherits it)."""
    before = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(before)


class LocalCluster:
    """A Ray head (no CPUs: it only schedules) and three worker nodes of one CPU each; every node has
    its own model cache and temporary folder, as separate machines would."""

    def __init__(self, folder: Path) -> None:
        from ray.cluster_utils import Cluster

        self.folder, self.count = folder, 0
        self.cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        self.workers = [self.add_worker() for _ in range(3)]  # a node is added in this thread only (Ray's signals)

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_worker(self):  # noqa: ANN201 (ray's Node)
        self.count += 1
        node = self.folder / f"node-{self.count}"
        (node / "tmp").mkdir(parents=True)
        with environment(SEMDPO_MODEL_CACHE=str(node / "models"), TMPDIR=str(node / "tmp"), OMP_NUM_THREADS="1",
                         PYTHONPATH=str(ROOT)):
            return self.cluster.add_node(num_cpus=1)

    def running(self, node) -> list[str]:  # noqa: ANN001
        """The Ray tasks a node runs now, by their process titles (`ray::render`, ...)."""
        raylet = node.all_processes["raylet"][0].process.pid
        titles = []
        for child in psutil.Process(raylet).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                title = " ".join(child.cmdline()).strip()
                if title.startswith("ray::") and not title.startswith(IDLE):
                    titles.append(title)
        return titles

    def kill(self, node) -> None:  # noqa: ANN001
        """The node dies: its raylet and workers are killed, no graceful shutdown."""
        self.cluster.remove_node(node, allow_graceful=False)
        self.workers.remove(node)

    def shutdown(self) -> None:
        self.cluster.shutdown()


@pytest.fixture
def ray_cluster(tmp_path, s3_server) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path / "nodes")  # after s3_server: the nodes inherit its endpoint
    yield cluster
    cluster.shutdown()


class NodeKiller(threading.Thread):
    """Kills the worker node that runs a render shard, then the node that runs a training run once
    that run has a checkpoint past step 2; records when and what."""

    def __init__(self, cluster: LocalCluster, store: ArtifactStore, runs: dict) -> None:
        super().__init__(daemon=True)
        self.cluster, self.store, self.runs = cluster, store, runs
        self.killed: list[tuple[str, float, list[str]]] = []  # (phase, time, tasks it ran)
        self.stop = threading.Event()

    def kill_when(self, phase: str, ready) -> None:  # noqa: ANN001
        while not self.stop.wait(0.05):
            for node in list(self.cluster.workers):
                tasks = [t for t in self.cluster.running(node) if t.startswith(f"ray::{phase}")]
                if tasks and ready():
                    self.cluster.kill(node)
                    self.killed.append((phase, time.monotonic(), tasks))
                    return

    def run(self) -> None:
        self.kill_when("render", lambda: True)
        self.kill_when("train", lambda: any(step > 2 for ref in self.runs.values()
                                            for step in self.store.checkpoint_steps(ref)))


def run_cli(config: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT, **kwargs)


def test_nodes_killed_mid_render_and_mid_training_leave_the_run_byte_identical(tmp_path, s3_bucket, ray_cluster):
    # 1. The undisturbed run: here, one shard after another, one thread (as each Ray task has).
    reference = tmp_path / "reference.yaml"
    reference.write_text(yaml.safe_dump({**CONFIG, "store": str(tmp_path / "reference")}))
    undisturbed = run_cli(reference)
    assert undisturbed.wait(timeout=600) == 0, undisturbed.stdout.read()[-4000:]

    # 2. The same run on the cluster, its store on S3; two nodes die under it.
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "store": s3_bucket,
                                      "runner": {"kind": "ray", "address": ray_cluster.address}}))
    cfg = load_config(config)
    plan, store = plan_pipeline(cfg), ArtifactStore(cfg.store_root())
    killer = NodeKiller(ray_cluster, store, plan.train)
    started = time.monotonic()
    process = run_cli(config)
    killer.start()
    try:
        log, _ = process.communicate(timeout=900)
    finally:
        killer.stop.set()
        killer.join(timeout=60)
    assert process.returncode == 0, log[-6000:]
    print(f"cluster run: {time.monotonic() - started:.0f} s; killed " + "; ".join(
        f"{phase} node at {when - started:.0f} s running {tasks}" for phase, when, tasks in killer.killed))
    assert [phase for phase, _, _ in killer.killed] == ["render", "train"], "both faults must land in the run"
    assert log.count("the node it was running on is dead") >= 2  # Ray retried the lost tasks elsewhere

    # 3. Every output is the undisturbed run's, byte for byte (the report's markdown names its store).
    ours, theirs = manifests(config), manifests(reference)
    assert list(ours) == list(theirs)
    for label in ours:
        if label != "report":
            assert digests(ours[label]) == digests(theirs[label]), label
    assert digests(ours["report"])[0] == digests(theirs["report"])[0]

    # 4. The killed training run resumed from its checkpoint; no run logged a step twice.
    assert "resuming from the checkpoint at step" in log
    for method, ref in plan.train.items():
        steps = store.read_table(ref, TRAIN_LOG).column("step").to_pylist()
        assert steps == list(range(len(steps))) and len(steps) > 2, (method, steps)  # each once, none missing
