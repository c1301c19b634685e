"""Create the work pools and register every deployment of prefect.yaml, idempotently."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

PROJECT_DIR = Path(__file__).resolve().parent.parent
PREFECT_FILE = PROJECT_DIR / "prefect.yaml"


def work_pools(prefect_file: Path = PREFECT_FILE) -> list[str]:
    """The work pool names that prefect.yaml's deployments use."""
    spec = yaml.safe_load(prefect_file.read_text())
    return sorted({d["work_pool"]["name"] for d in spec["deployments"]})


def ensure_work_pools(names: list[str], pool_type: str = "process") -> list[str]:
    """Create the pools that do not exist yet; returns the names created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    created = []
    with get_client(sync_client=True) as client:
        for name in names:
            try:
                client.read_work_pool(name)
            except ObjectNotFound:
                client.create_work_pool(WorkPoolCreate(name=name, type=pool_type))
                created.append(name)
    return created


def register_deployments(project_dir: Path = PROJECT_DIR) -> None:
    """`prefect deploy --all` from the project directory (re-registering updates in place)."""
    env = {**os.environ, "SEMDPO_PROJECT_DIR": os.environ.get("SEMDPO_PROJECT_DIR", str(project_dir))}
    command = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all",
               "--prefect-file", str(project_dir / "prefect.yaml")]
    subprocess.run(command, cwd=project_dir, env=env, check=True)
