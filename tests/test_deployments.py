"""End to end as users run it: a real Prefect API server on 127.0.0.1 (SQLite), `semdpo deploy`,
a process worker, `prefect deployment run ... --watch`, artifacts, and a second trigger that
finds every task Cached; and the same path on a server with basic auth on (the Docker stack's)."""

import base64
import contextlib
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments.deploy import CRASH_AUTOMATION
from tests.servers import PrefectServer, final_task_states, flow_run_logs
from tests.small import SMALL

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def prefect(*args: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**env, "COLUMNS": "250"}  # wide tables: artifact keys are not cut
    return subprocess.run([sys.executable, "-m", "prefect", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)


AUTH = "semdpo:test-only-secret"  # user:password of the basic-auth server; a test value, never a real one


@contextlib.contextmanager
def prefect_server(tmp_path: Path, server_env: dict[str, str] | None = None) -> Iterator[dict[str, str]]:
    """A Prefect API server on 127.0.0.1 with its own SQLite database, `server_env` added to its
    environment only; yields the clients' environment and stops the server afterwards."""
    server = PrefectServer(tmp_path / "prefect-home", server_env)
    try:
        server.start()
    except RuntimeError as e:
        pytest.fail(str(e))
    try:
        yield {**server.env, "SEMDPO_STORE": str(tmp_path / "store")}
    finally:
        server.stop()


@pytest.fixture
def prefect_api(tmp_path):
    """A Prefect API server without auth (`prefect server start`'s default); stopped after the test."""
    with prefect_server(tmp_path) as env:
        yield env


@pytest.fixture
def prefect_api_with_auth(tmp_path):
    """A Prefect API server with basic auth on (PREFECT_SERVER_API_AUTH_STRING), as docker/compose.yaml
    runs it; the clients' environment carries PREFECT_API_AUTH_STRING."""
    with prefect_server(tmp_path, {"PREFECT_SERVER_API_AUTH_STRING": AUTH}) as env:
        yield {**env, "PREFECT_API_AUTH_STRING": AUTH}


def deploy(env: dict, *options: str) -> subprocess.CompletedProcess:
    """`semdpo deploy`: the work pools, the crash-detection automation and every deployment of prefect.yaml."""
    return subprocess.run([sys.executable, "-m", "flows.cli", "deploy", *options], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)


@contextlib.contextmanager
def worker(pool: str, env: dict, cwd: Path, log: Path | None = None) -> Iterator[subprocess.Popen]:
    """A process worker on `pool` for the duration of the block, polling every second (default 10 s)
    so that a triggered run starts at once; its output (and its flow runs') goes to `log` if given."""
    env = {**env, "PREFECT_WORKER_QUERY_SECONDS": "1"}
    with open(log or os.devnull, "a") as out:
        process = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool], env=env,
                                   cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):  # a test may have killed it
            os.killpg(process.pid, 15)
        process.wait(timeout=60)


def run_deployment(name: str, config: Path, env: dict) -> subprocess.CompletedProcess:
    """`prefect deployment run NAME --param config_path=CONFIG --watch`: returns when the run is final."""
    return prefect("deployment", "run", name, "--param", f"config_path={config}", "--watch", env=env)


def small_config(tmp_path: Path) -> Path:
    """tests/small.py's config as a YAML file the worker reads."""
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(SMALL))
    return config


def http_status(url: str, auth: str | None = None, body: bytes | None = None) -> int:
    """The HTTP status of a GET (or, with `body`, a JSON POST) to `url`, with basic auth when `auth`."""
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def task_states(flow_run_name: str, env: dict) -> list[str]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    return final_task_states(FlowRunFilter(name=FlowRunFilterName(any_=[flow_run_name])),
                             api_url=env["PREFECT_API_URL"], auth_string=env.get("PREFECT_API_AUTH_STRING"))


def flow_run_name(output: str) -> str:
    for line in output.splitlines():
        if "Created flow run" in line:
            return line.split("'")[1]
    raise AssertionError(f"no flow run in:\n{output[-2000:]}")


def test_deploy_trigger_watch_and_rerun_cached(tmp_path, prefect_api):
    # as on a user's machine: the worker's environment does not name the library's logger (this
    # test process's does, since it imported tasks/)
    env = {k: v for k, v in prefect_api.items() if k != "PREFECT_LOGGING_EXTRA_LOGGERS"}
    config = small_config(tmp_path)
    config.write_text(yaml.safe_dump({**SMALL, "train": {**SMALL["train"], "checkpoint_every": 1}}))

    for _ in range(2):  # idempotent
        deployed = deploy(env)
        assert deployed.returncode == 0, deployed.stderr[-3000:]
    assert "semdpo-cpu, semdpo-gpu (all existed)" in deployed.stdout
    assert f"automation {CRASH_AUTOMATION!r} (90 s): unchanged" in deployed.stdout  # created once, not twice
    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}), \
            get_client(sync_client=True) as client:
        [automation] = client.read_automations_by_name(CRASH_AUTOMATION)
    assert automation.enabled and automation.trigger.posture == "Proactive"
    assert automation.trigger.within.total_seconds() == 90 and automation.actions[0].state == "CRASHED"
    redeployed = deploy(env, "--crash-after", "120")
    assert f"automation {CRASH_AUTOMATION!r} (120 s): updated" in redeployed.stdout, redeployed.stderr[-3000:]
    refused = deploy(env, "--crash-after", "20")  # shorter than the heartbeat: every run would crash
    assert refused.returncode == 2 and "must exceed the heartbeat interval (30 s)" in refused.stderr, refused.stderr
    listed = prefect("deployment", "ls", env=env).stdout
    for name in ("pipeline", "prompts", "render", "train", "evaluate"):
        assert f"semdpo-pipeline/{name}" in listed
    inspected = prefect("deployment", "inspect", "semdpo-pipeline/pipeline", env=env).stdout
    assert "'cron': '0 2 * * *'" in inspected and "'active': False" in inspected  # a fresh deploy starts nothing

    with worker("semdpo-gpu", env, tmp_path):
        first = run_deployment("semdpo-pipeline/pipeline", config, env)
        assert first.returncode == 0 and "Completed" in first.stdout, (first.stdout + first.stderr)[-3000:]
        artifacts = prefect("artifact", "ls", env=env).stdout
        for key in ("run", "metrics", "render-progress", "report", "report-scores", "report-tokens",
                    "report-head-to-head", "report-drift", "plot-samples", "plot-training-curves",
                    *(f"stage-{name}" for name in ("prompts", "sft", "candidates", "render", "label", "pairs", "weigh",
                                                   "reference", "train-dpo", "train-sem-dpo", "evaluate", "report"))):
            assert f"semdpo-{key}" in artifacts, key

        # the library's own log lines reach the API from a deployment run, without a line per checkpoint
        assert "PREFECT_LOGGING_EXTRA_LOGGERS" not in env
        logs = flow_run_logs(flow_run_name(first.stdout), env["PREFECT_API_URL"], wait_for="final loss")
        library = [message for name, message in logs if name.startswith("semdpo.")]
        assert (any("shards, 0 reused" in m for m in library)
                and any("dpo: " in m and "final loss" in m for m in library))
        assert not any("checkpoint at step" in m for m in library)
        first_states = task_states(flow_run_name(first.stdout), env)
        assert first_states and "Cached" not in first_states

        second = run_deployment("semdpo-pipeline/pipeline", config, env)
        assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
        states = task_states(flow_run_name(second.stdout), env)
        assert len(states) == len(first_states) and set(states) == {"Cached"}


def test_basic_auth_refuses_anonymous_requests_and_runs_a_deployment(tmp_path, prefect_api_with_auth):
    """The Docker stack's server: basic auth on. Requests without the right credentials get 401 (only
    the health probe stays open); with PREFECT_API_AUTH_STRING, deploy, a worker and a run work."""
    env = prefect_api_with_auth
    api = env["PREFECT_API_URL"]
    assert http_status(f"{api}/health") == 200  # compose's healthcheck needs no credentials
    for auth in (None, "semdpo:wrong"):
        assert http_status(f"{api}/flows/filter", auth, body=b"{}") == 401
    assert http_status(f"{api}/flows/filter", AUTH, body=b"{}") == 200
    anonymous = {k: v for k, v in env.items() if k != "PREFECT_API_AUTH_STRING"}
    refused = deploy(anonymous)  # a client without PREFECT_API_AUTH_STRING
    assert refused.returncode != 0 and "401" in refused.stderr, refused.stderr[-3000:]

    deployed = deploy(env)
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    assert "semdpo-cpu, semdpo-gpu (created" in deployed.stdout
    with worker("semdpo-cpu", env, tmp_path):
        run = run_deployment("semdpo-pipeline/prompts", small_config(tmp_path), env)  # the smallest deployment
        assert run.returncode == 0 and "Completed" in run.stdout, (run.stdout + run.stderr)[-3000:]
    states = task_states(flow_run_name(run.stdout), env)
    assert states and set(states) == {"Completed"}
