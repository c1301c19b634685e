"""Create the work pools, the automation that marks dead flow runs Crashed, and register every
deployment of prefect.yaml, idempotently."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from deployments.prefect_yaml import HEARTBEAT_SECONDS

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


CRASH_AUTOMATION = "semdpo: mark flow runs Crashed when their heartbeats stop"


def crash_detection(silent_for_s: float) -> Any:
    """Prefect's zombie-flow automation, for semdpo's deployment runs only: a flow run that sent a
    heartbeat (prefect.yaml has one every 30 s) and then nothing for `silent_for_s` seconds, no heartbeat
    and no final state, lost its worker or machine; it is set Crashed, so the UI says so and it can be retried."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    if silent_for_s <= HEARTBEAT_SECONDS:
        raise ValueError(f"{silent_for_s:g} s must exceed the heartbeat interval ({HEARTBEAT_SECONDS} s), "
                         "or every run would be marked Crashed between two heartbeats")
    final = {f"prefect.flow-run.{state}" for state in ("Completed", "Failed", "Cancelled", "Crashed")}
    return Automation(
        name=CRASH_AUTOMATION,
        description="semdpo deploy: a semdpo flow run silent for longer than a few heartbeats is Crashed",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *final},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            # runs of semdpo's deployments only: their heartbeat is prefect.yaml's 30 s, while a run
            # started by hand (`semdpo run`) beats at Prefect's default 180 s and must not be crashed
            match_related=[
                ResourceSpecification({"prefect.resource.role": "flow", "prefect.resource.name": "semdpo-*"}),
                ResourceSpecification({"prefect.resource.role": "deployment"}),
            ],
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=silent_for_s),
        ),
        actions=[ChangeFlowRunState(
            state=StateType.CRASHED,
            message=f"no heartbeat for {silent_for_s:g} s: the worker or machine running this flow run stopped. "
                    "Retry it (the UI's Retry, or prefect flow-run retry NAME): finished stages and shards are "
                    "reused from the store.",
        )],
    )


def ensure_crash_detection(silent_for_s: float = 90) -> str:
    """Create the crash-detection automation, or bring an existing one to `silent_for_s`; returns
    what was done (created, updated, unchanged)."""
    from prefect.client.orchestration import get_client

    wanted = crash_detection(silent_for_s)
    with get_client(sync_client=True) as client:
        existing = client.read_automations_by_name(CRASH_AUTOMATION)
        if not existing:
            wanted.create()
            return "created"
        [current, *duplicates] = existing
        for extra in duplicates:  # two deploys racing each other
            client.delete_automation(extra.id)
        if current.trigger == wanted.trigger and current.actions == wanted.actions and current.enabled:
            return "unchanged"
        wanted.id = current.id
        wanted.update()
        return "updated"


def register_deployments(project_dir: Path = PROJECT_DIR) -> None:
    """`prefect deploy --all` from the project directory (re-registering updates in place)."""
    env = {**os.environ, "SEMDPO_PROJECT_DIR": os.environ.get("SEMDPO_PROJECT_DIR", str(project_dir))}
    command = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all",
               "--prefect-file", str(project_dir / "prefect.yaml")]
    subprocess.run(command, cwd=project_dir, env=env, check=True)
