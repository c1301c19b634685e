"""Local servers for tests: moto's S3-compatible server, a TCP proxy that can be cut, a Prefect API
server that can be stopped and started again, and reading task states back from it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class MotoServer:
    """moto's standalone S3 server on 127.0.0.1 (in memory; stops with the process)."""

    def __init__(self) -> None:
        self.port = free_port()
        script = Path(sys.executable).parent / "moto_server"
        self.process = subprocess.Popen(
            [str(script), "-H", "127.0.0.1", "-p", str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


class PrefectServer:
    """`prefect server start` on 127.0.0.1 with its own SQLite database under `home`; `stop()` and
    `start()` again bring it back on the same port with the same database, as a restart would."""

    def __init__(self, home: Path, server_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                    "PREFECT_API_URL": self.url}  # the clients' environment
        self.server_env = server_env or {}
        self.log = home / "server.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> None:
        home = Path(self.env["PREFECT_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
                env={**self.env, **self.server_env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{self.url}/health", timeout=1)  # open with basic auth on too
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the Prefect server did not come up in {timeout:.0f} s; its log: {self.log}")

    def stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=60)
            self.process = None


class Proxy:
    """A TCP proxy in front of a server; `stop()` refuses connections until `start()` again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)


def final_task_states(flow_run_filter, api_url: str | None = None, settle_s: float = 60.0,
                      auth_string: str | None = None) -> list[str]:
    """Sorted state names of the task runs of the flow runs `flow_run_filter` selects, on the
    current Prefect API or `api_url` (with basic auth `auth_string`, a server's "user:password").
    Prefect 3 records task states through events, after the flow returns: wait (up to `settle_s`)
    until every one is final."""
    from prefect.client.orchestration import get_client
    from prefect.settings import (
        PREFECT_API_AUTH_STRING,
        PREFECT_API_URL,
        temporary_settings,
    )

    updates = {**({PREFECT_API_URL: api_url} if api_url else {}),
               **({PREFECT_API_AUTH_STRING: auth_string} if auth_string else {})}
    deadline = time.monotonic() + settle_s
    with temporary_settings(updates=updates), get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=flow_run_filter)
            if all(r.state is not None and r.state.is_final() for r in runs) or time.monotonic() > deadline:
                return sorted(r.state.name if r.state else "None" for r in runs)
            time.sleep(0.5)


def flow_run_logs(flow_run_name: str, api_url: str, wait_for: str, settle_s: float = 60.0) -> list[tuple[str, str]]:
    """(logger name, message) of every log a flow run sent to the API, in order. Logs arrive in
    batches after the lines are written: wait (up to `settle_s`) until one holds `wait_for`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterName,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + settle_s
    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        [run] = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[flow_run_name])))
        while True:
            logs, page = [], None
            while page is None or len(page) == 200:  # every page (a retried run has both attempts' logs)
                page = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])),
                                        limit=200, offset=len(logs))
                logs += page
            lines = [(log.name, log.message) for log in sorted(logs, key=lambda log: log.timestamp)]
            if any(wait_for in message for _, message in lines) or time.monotonic() > deadline:
                return lines
            time.sleep(1)


def flow_run_state(flow_run_name: str, api_url: str) -> tuple[str, str]:
    """(state name, state message) of the flow run named `flow_run_name`, as the API has it now."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        [run] = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[flow_run_name])))
    return (run.state.name, run.state.message or "") if run.state else ("None", "")
