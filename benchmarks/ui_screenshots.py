"""Screenshots of a finished run in the Prefect UI, taken with headless Chromium: the run's
page (its graph and logs), the summary (`semdpo-run`), the metrics, the report and its plots.

    python benchmarks/ui_screenshots.py --out /tmp/ui [--set data.max_train_prompts=200 ...]

Starts a Prefect server on a free loopback port (its own PREFECT_HOME), runs `semdpo run` against
it on the offline default (a fresh store under --out), then saves one PNG per page and prints what
each shows. Needs `chromium` (Debian: apt-get install chromium).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# artifact key -> window height: the report is long, the rest fit a screen
PAGES = {"semdpo-run": 1400, "semdpo-metrics": 1000, "semdpo-report": 6000, "semdpo-plot-samples": 1200,
         "semdpo-plot-training-curves": 1000}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(url: str, path: str, body: dict | None = None) -> object:
    """One call to the Prefect REST API (POST when `body` is given)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wait_healthy(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            api(url, "/health")
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"no Prefect API at {url} after {timeout:.0f} s")


def screenshot(chromium: str, page: str, target: Path, height: int = 1400) -> None:
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={target}",
                    f"--window-size=1600,{height}", "--virtual-time-budget=15000", "--hide-scrollbars", page],
                   check=True, capture_output=True, timeout=120)


def server_command(port: int) -> list[str]:
    """Prefect's server from this interpreter's environment (a venv's bin folder need not be on PATH)."""
    return [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]


def run_command(config: str | None, overrides: list[str]) -> list[str]:
    """`semdpo run` from this interpreter's environment, with each override as a --set."""
    command = [sys.executable, "-m", "flows.cli", "run", *([config] if config else [])]
    for override in overrides:
        command += ["--set", override]
    return command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the store, the server's home and the PNGs")
    parser.add_argument("--config", default=None, help="pipeline config (default: the offline default)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override, as semdpo run")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium is not installed (Debian: apt-get install chromium)")
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(args.out / "prefect"), "PREFECT_API_URL": url,
           "PREFECT_UI_API_URL": url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    server = subprocess.Popen(server_command(port), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_healthy(url)
        command = run_command(args.config, [f"store={args.out / 'store'}", *args.overrides])
        print("running:", " ".join(command), flush=True)
        subprocess.run(command, env=env, check=True)
        runs = api(url, "/flow_runs/filter", {"sort": "START_TIME_DESC", "limit": 1})
        run_id = runs[0]["id"]
        base = f"http://127.0.0.1:{port}"
        shots = {"flow-run-logs": (f"{base}/runs/flow-run/{run_id}", 1400)}  # the run's graph and its logs
        artifacts = api(url, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
        ids = {a["key"]: a["id"] for a in artifacts if a.get("key")}
        shots.update({key: (f"{base}/artifacts/artifact/{ids[key]}", height)
                      for key, height in PAGES.items() if key in ids})
        missing = [key for key in PAGES if key not in ids]
        if missing:
            print("not published by this run:", ", ".join(missing), flush=True)
        for name, (page, height) in shots.items():
            target = args.out / f"{name}.png"
            screenshot(chromium, page, target, height)
            print(f"{target}  <- {page}", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
