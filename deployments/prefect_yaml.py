"""prefect.yaml, written from the stage table: the whole pipeline, and one deployment per stage
on its stage's work pool. `python -m deployments.prefect_yaml` rewrites the file; a test checks
that the checked-in file is what this writes."""

from __future__ import annotations

from pathlib import Path

from semdpo_core.pipeline.stage_table import STAGES

PREFECT_FILE = Path(__file__).resolve().parent.parent / "prefect.yaml"
PREFECT_VERSION = "3.8.8"
HEARTBEAT_SECONDS = 30  # Prefect's minimum; deployments/deploy.py's automation waits a few of them

HEADER = f"""\
# Deployments of the semdpo pipeline: the whole pipeline, and each stage alone.
# Written from the stage table (semdpo_core/pipeline/stage_table.py) by `python -m deployments.prefect_yaml`;
# edit that, not this file. `semdpo deploy` creates the two work pools and registers all of
# these (`prefect deploy --all`).
# Parameters: config_path (a YAML config on the worker; null: the offline default), overrides
# (["section.field=value", ...]) and, for the stage deployments, the stage to run alone.
name: semdpo
prefect-version: {PREFECT_VERSION}

build: null
push: null
pull:
  # workers run the flows from the project's checkout (the Docker images have it at /opt/semdpo)
  - prefect.deployments.steps.set_working_directory:
      directory: "{{{{ $SEMDPO_PROJECT_DIR }}}}"

definitions:
  # every flow run of these deployments sends a heartbeat event every 30 s; the automation that
  # `semdpo deploy` creates marks a run Crashed once they stop (its worker or machine died)
  job_variables: &job_variables
    env:
      PREFECT_FLOWS_HEARTBEAT_FREQUENCY: "{HEARTBEAT_SECONDS}"
  work_pools:
    gpu: &gpu
      name: semdpo-gpu
      work_queue_name: default
      job_variables: *job_variables
    cpu: &cpu
      name: semdpo-cpu
      work_queue_name: default
      job_variables: *job_variables

deployments:
  - name: pipeline
    description: The whole Sem-DPO pipeline, from prompts to the evaluation report.
    entrypoint: flows/pipeline.py:pipeline
    parameters:
      config_path: null
      overrides: []
    work_pool: *gpu
    schedules:
      # nightly; off until switched on (prefect deployment set-schedule / the UI), so a fresh
      # `prefect deploy --all` starts nothing
      - cron: "0 2 * * *"
        timezone: UTC
        active: false
  - name: drift-study
    description: The drift study (issue 23), a grid of pipeline runs over seeds, doses and arms, and its report.
    entrypoint: flows/study.py:study
    parameters:
      spec_path: configs/drift_study.yaml
    work_pool: *gpu
"""

STAGE_DEPLOYMENT = """\
  - name: {name}
    description: "The {name} stage alone ({summary}); its upstream stages must be in the store."
    entrypoint: flows/pipeline.py:pipeline
    parameters:
      config_path: null
      overrides: []
      stage: {name}
    work_pool: *{pool}
"""


def render() -> str:
    """The text of prefect.yaml."""
    return HEADER + "".join(STAGE_DEPLOYMENT.format(name=s.name, pool=s.pool, summary=s.summary.replace('"', "'"))
                            for s in STAGES)


if __name__ == "__main__":
    PREFECT_FILE.write_text(render())
    print(f"wrote {PREFECT_FILE} ({len(STAGES)} stage deployments)")
