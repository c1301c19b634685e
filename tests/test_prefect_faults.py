"""Faults on the Prefect side of a running pipeline (issue 26): the API server stopped for 30 s and
started again under a running flow, and the worker running a deployment killed with SIGKILL (its
flow run with it, as when its machine dies). Each test asserts the outcome and prints the time lost."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from semdpo_core.pipeline.config import load_config
from semdpo_core.pipeline.plan import plan_pipeline
from semdpo_core.pipeline.schemas import TRAIN_LOG
from semdpo_core.store.artifact_store import ArtifactStore
from tests.servers import PrefectServer, flow_run_logs, flow_run_state
from tests.small import merged
from tests.test_deployments import deploy, flow_run_name, prefect, prefect_server, worker
from tests.test_resume import SMALL as RESUMABLE
from tests.test_resume import run_cli

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
# test_resume's run (six render shards, training runs of 36 steps) with a checkpoint at every step
CONFIG = merged(RESUMABLE, {"train": {"checkpoint_every": 1}, "device": "cpu"})
OUTAGE_S = 30
STAMP = re.compile(r"^(\d\d:\d\d:\d\d\.\d+) \| INFO +\| semdpo\.stages - (.*committed.*)$", re.MULTILINE)


def clock(stamp: str) -> dt.time:
    return dt.datetime.strptime(stamp, "%H:%M:%S.%f").time()


def seconds_between(a: dt.time, b: dt.time) -> float:
    day = dt.date.today()
    return (dt.datetime.combine(day, b) - dt.datetime.combine(day, a)).total_seconds()


def write_config(tmp_path: Path) -> tuple[Path, ArtifactStore, dict]:
    """The run's config file, its store, and its training runs' refs (method -> ref)."""
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "store": str(tmp_path / "store")}))
    config = load_config(path)
    return path, ArtifactStore(config.store_root()), plan_pipeline(config).train


def run_into_render(config: Path, env: dict, log: Path) -> subprocess.Popen:
    """`semdpo run` started, returned once its render stage has begun (its output in `log`)."""
    with log.open("w") as out:
        run = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(config)], stdout=out,
                               stderr=subprocess.STDOUT, env={**env, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    wait_for(lambda: "render render/" in log.read_text() or run.poll() is not None, 300, "render started")
    return run


def wait_for(condition, timeout: float, what: str, poll: float = 0.2) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout:.0f} s")
        time.sleep(poll)


def stage_states(log: str) -> dict[str, str]:
    """What the run did to each output, from its closing summary (`  label  fingerprint  state`)."""
    return dict(re.findall(r"(?:^|-) +([\w:.@=-]+) +[0-9a-f]{16}  (\w+)$", log, re.MULTILINE))


def rerun_reuses_everything(config: Path, env: dict) -> int:
    """A rerun of the config computes nothing: every output is reused from the store. Returns how many."""
    rerun = run_cli(config, env=env, cwd=ROOT)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    states = stage_states(rerun.stdout + rerun.stderr)
    assert states and set(states.values()) == {"reused"}, states
    return len(states)


def test_api_server_stopped_30s_under_a_running_flow(tmp_path):
    server = PrefectServer(tmp_path / "prefect-home")
    server.start()
    config, _, _ = write_config(tmp_path)
    first_log = tmp_path / "first.log"
    try:
        # 1. The run starts; once the render stage begins, the API server goes away for 30 s.
        run = run_into_render(config, server.env, first_log)
        server.stop()
        down = dt.datetime.now().time()
        time.sleep(OUTAGE_S)
        still_running = run.poll() is None
        server.start()
        up = dt.datetime.now().time()
        assert run.wait(timeout=600) == 0, first_log.read_text()[-6000:]
        log = first_log.read_text()
        assert still_running, "the outage must fall under the running flow"

        # 2. The flow carried on: the render stage (and more) was committed while the server was down,
        # and the run ended Completed on the API once it was back.
        during = [line for stamp, line in STAMP.findall(log) if down <= clock(stamp) <= up]
        assert any(re.match(r"render render/\w+: committed", line) for line in during), during
        name = re.search(r"Flow run '([\w-]+)' - Finished in state Completed", log).group(1)
        assert flow_run_state(name, server.url)[0] == "Completed"

        # 3. A rerun recomputes nothing: every output is reused from the store.
        reused = rerun_reuses_everything(config, server.env)
        stamps = [clock(stamp) for stamp, _ in STAMP.findall(log)]
        held = max(seconds_between(a, b) for a, b in zip(stamps, stamps[1:], strict=False))
        print(f"API outage: {OUTAGE_S} s from the start of the render stage; {len(during)} commits during it, at most "
              f"{held:.1f} s between two; the run completed; the rerun reused all {reused} outputs "
              "(0 s of work redone)")
    finally:
        server.stop()


def test_api_server_gone_past_the_client_retries_stops_the_run_with_a_rerun_message(tmp_path):
    """The same outage, longer than the Prefect client retries (here none): the run stops at its first
    call to the API that cannot wait, says to rerun, and the rerun computes nothing again."""
    server = PrefectServer(tmp_path / "prefect-home")
    server.start()
    config, _, _ = write_config(tmp_path)
    first_log = tmp_path / "first.log"
    env = {**server.env, "PREFECT_CLIENT_MAX_RETRIES": "0"}
    try:
        run = run_into_render(config, env, first_log)
        server.stop()
        assert run.wait(timeout=600) == 1, first_log.read_text()[-6000:]
        log = first_log.read_text()
        assert f"error: the Prefect API at {server.url} did not answer" in log
        assert "run the same command again; it recomputes nothing that was committed" in log
        assert "Traceback" not in log.split("error: the Prefect API")[1]  # one message, no traceback after it

        server.start()
        rerun_reuses_everything(config, server.env)
    finally:
        server.stop()


def kill_tree(pid: int) -> list[str]:
    """SIGKILL a process and every process under it, as when their machine dies; their command lines."""
    processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    lines = [" ".join(p.cmdline()) for p in processes]
    for process in processes:
        os.kill(process.pid, signal.SIGKILL)
    return lines


def test_worker_killed_mid_training_crashes_the_run_and_a_retry_resumes_it(tmp_path):
    config, store, train = write_config(tmp_path)

    def checkpoints() -> list[tuple[float, str, int]]:
        """(written at, method, step) of every complete checkpoint in the store now, oldest first."""
        return sorted((Path(store.root, ref.prefix, "_checkpoints", f"step-{step:09d}", "_index.json").stat().st_mtime,
                       method, step)
                      for method, ref in train.items() for step, done in store.checkpoint_steps(ref).items() if done)

    with prefect_server(tmp_path) as env:
        deployed = deploy(env, "--crash-after", "60")
        assert deployed.returncode == 0, deployed.stderr[-3000:]

        # 1. A deployment run; its worker (and the flow run under it) is SIGKILLed mid-training.
        with worker("semdpo-gpu", env, tmp_path, log=tmp_path / "worker-1.log") as first:
            triggered = prefect("deployment", "run", "semdpo-pipeline/pipeline", "--param", f"config_path={config}",
                                env=env)
            assert triggered.returncode == 0, triggered.stderr[-3000:]
            name = flow_run_name(triggered.stdout)
            wait_for(lambda: any(step > 2 for _, _, step in checkpoints()), 600, "a checkpoint past step 2", poll=0.05)
            time.sleep(0.3)  # most likely between two checkpoints: the work since the last one is lost
            kept = checkpoints()
            killed_at, killed_wall = time.monotonic(), time.time()
            killed = kill_tree(first.pid)
        assert any("flow_run" in line or "flows/pipeline.py" in line or "prefect.engine" in line
                   for line in killed[1:]), killed  # the flow run's process died with its worker
        (previous, _, _), (written, killed_run, last) = kept[-2:]  # the newest two (checkpoint_every 1: a step apart)

        # 2. Its heartbeats stop; the automation `semdpo deploy` made marks it Crashed.
        wait_for(lambda: flow_run_state(name, env["PREFECT_API_URL"])[0] == "Crashed", 240, "Crashed", poll=1)
        crashed_after = time.monotonic() - killed_at
        assert "no heartbeat for 60 s" in flow_run_state(name, env["PREFECT_API_URL"])[1]

        # 3. `prefect flow-run retry` on a fresh worker continues where it stopped.
        with worker("semdpo-gpu", env, tmp_path, log=tmp_path / "worker-2.log"):
            retried = prefect("flow-run", "retry", name, env=env)
            assert retried.returncode == 0, (retried.stdout + retried.stderr)[-3000:]
            retry_started = time.monotonic()
            wait_for(lambda: flow_run_state(name, env["PREFECT_API_URL"])[0] in ("Completed", "Failed", "Crashed"),
                     600, "the retry's end", poll=1)
            retry_s = time.monotonic() - retry_started
            # read before the worker stops: its flow run's process may still be sending the last logs
            logs = [message for _, message in flow_run_logs(name, env["PREFECT_API_URL"], wait_for="run record")]
        assert flow_run_state(name, env["PREFECT_API_URL"])[0] == "Completed", (
            (tmp_path / "worker-2.log").read_text()[-6000:])
        states = stage_states("\n".join(logs))
        for label in ("prompts", "sft", "candidates", "render", "label", "pairs", "weigh", "reference"):
            assert states[label] == "reused", states  # committed before the kill: not computed again
        assert "resumed" in (states["train:dpo"], states["train:sem_dpo"]), states
        resumed_at = [int(m.group(1)) for m in map(re.compile(r"resuming from the checkpoint at step (\d+)").search,
                                                     logs) if m]
        assert resumed_at, "the killed training run did not resume from its checkpoint"
        for method, ref in train.items():
            steps = store.read_table(ref, TRAIN_LOG).column("step").to_pylist()
            assert steps == list(range(len(steps))) and len(steps) > 2, (method, steps)  # no step twice
    print(f"worker SIGKILL: killed {killed_wall - written:.2f} s after {killed_run}'s checkpoint at step {last} "
          f"(a step took {written - previous:.2f} s); Crashed {crashed_after:.0f} s after the kill; the retry resumed "
          f"at step(s) {resumed_at} and finished in {retry_s:.0f} s")
