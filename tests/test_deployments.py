"""End to end as users run it: a real Prefect API server on 127.0.0.1 (SQLite), `semdpo deploy`,
a process worker, `prefect deployment run ... --watch`, artifacts, and a second trigger that
finds every task Cached."""

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.servers import final_task_states, free_port
from tests.small import SMALL

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def prefect(*args: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**env, "COLUMNS": "250"}  # wide tables: artifact keys are not cut
    return subprocess.run([sys.executable, "-m", "prefect", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)


@pytest.fixture
def prefect_api(tmp_path):
    """A Prefect API server on 127.0.0.1 with its own SQLite database; stopped after the test."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "SEMDPO_STORE": str(tmp_path / "store")}
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("the Prefect server did not come up in 120 s")
    yield env
    os.killpg(server.pid, 15)
    server.wait(timeout=60)


def task_states(flow_run_name: str, env: dict) -> list[str]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    return final_task_states(FlowRunFilter(name=FlowRunFilterName(any_=[flow_run_name])), api_url=env["PREFECT_API_URL"])


def flow_run_name(output: str) -> str:
    for line in output.splitlines():
        if "Created flow run" in line:
            return line.split("'")[1]
    raise AssertionError(f"no flow run in:\n{output[-2000:]}")


def test_deploy_trigger_watch_and_rerun_cached(tmp_path, prefect_api):
    env = prefect_api
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(SMALL))

    for _ in range(2):  # idempotent
        deployed = subprocess.run([sys.executable, "-m", "flows.cli", "deploy"], capture_output=True, text=True,
                                  env=env, cwd=ROOT, timeout=600)
        assert deployed.returncode == 0, deployed.stderr[-3000:]
    assert "semdpo-cpu, semdpo-gpu (all existed)" in deployed.stdout
    listed = prefect("deployment", "ls", env=env).stdout
    for name in ("pipeline", "prompts", "render", "train", "evaluate"):
        assert f"semdpo-pipeline/{name}" in listed
    inspected = prefect("deployment", "inspect", "semdpo-pipeline/pipeline", env=env).stdout
    assert "'cron': '0 2 * * *'" in inspected and "'active': False" in inspected  # a fresh deploy starts nothing

    worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "semdpo-gpu"], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        first = prefect("deployment", "run", "semdpo-pipeline/pipeline", "--param", f"config_path={config}", "--watch", env=env)
        assert first.returncode == 0 and "Completed" in first.stdout, (first.stdout + first.stderr)[-3000:]
        artifacts = prefect("artifact", "ls", env=env).stdout
        for key in ("prompts", "sft", "candidates", "render", "label", "pairs", "weigh", "reference", "metrics",
                    "train-dpo", "train-sem-dpo", "render-progress", "report", "report-scores", "report-tokens",
                    "report-head-to-head", "report-drift", "plot-samples"):
            assert f"semdpo-{key}" in artifacts, key
        first_states = task_states(flow_run_name(first.stdout), env)
        assert first_states and "Cached" not in first_states

        second = prefect("deployment", "run", "semdpo-pipeline/pipeline", "--param", f"config_path={config}", "--watch", env=env)
        assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
        states = task_states(flow_run_name(second.stdout), env)
        assert len(states) == len(first_states) and set(states) == {"Cached"}
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(timeout=60)
