"""The Sem-DPO pipeline as one Prefect flow: the stage table (`semdpo_core/pipeline/stage_table.py`) in order,
prompts -> SFT -> candidates -> render -> label (-> fidelity) -> pairs -> weigh -> reference ->
train (every run) (-> validate) -> evaluate -> report. Every output is a cached task (sharded stages: one task
per shard) keyed by its fingerprint; a rerun reuses whatever the store already holds.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

from prefect import flow, get_run_logger

from semdpo_core.models.needs import require_models
from semdpo_core.pipeline.config import PipelineConfig, load_config
from semdpo_core.pipeline.plan import Plan, plan_pipeline
from semdpo_core.pipeline.stage_table import STAGE_NAMES, STAGES
from semdpo_core.pipeline.stage_table import stage as stage_named
from semdpo_core.stages.prompts import check_inputs
from semdpo_core.stages.report.backbones import (
    backbone_evaluations,
    backbone_markdown,
    backbone_scores,
)
from semdpo_core.store.artifact_store import ArtifactStore, open_store
from tasks.artifacts import (
    publish_backbones,
    publish_metrics,
    publish_report,
    publish_run,
)
from tasks.stage_tasks import run_jobs


class UpstreamMissing(RuntimeError):
    """A stage was asked to run alone before the stages it reads from."""


def check_upstream(store: ArtifactStore, plan: Plan, stage: str) -> None:
    """Running one stage alone needs every stage before it in the store."""
    stage_named(stage)  # an unknown name: the error lists the stages
    before = set(STAGE_NAMES[: STAGE_NAMES.index(stage)])
    missing = [job.label for job in plan.jobs if job.stage.name in before and not store.is_committed(job.ref)]
    if missing:
        raise UpstreamMissing(
            f"stage {stage!r} needs {', '.join(missing)} first: run the pipeline (or those stages) before it"
        )


def run_stages(
    config: PipelineConfig, plan: Plan, until: str | None = None
) -> tuple[str | None, list[dict[str, str]] | None, dict[str, str]]:
    """Each stage of the table in order, through `until` (default: all), passing only store
    references between them. Returns the metrics (as text and rows) once the evaluation has run
    (else None) and what the run did to each output (reused, computed, resumed, recomputed)."""
    store = open_store(plan.runtime.store)
    metrics, rows, states = None, None, {}
    for stage in STAGES:
        jobs = plan.jobs_of(stage.name)
        states |= run_jobs(jobs, plan.runtime, config.runner)
        if stage.name == "evaluate":
            metrics, rows = publish_metrics(store, plan.ref("evaluate"))
        if stage.name == "report":
            publish_report(store, plan.ref("report"))
        if stage.name == until:
            break
    return metrics, rows, states


@flow(name="semdpo-pipeline")
def pipeline(config_path: str | None = None, overrides: list[str] | None = None, stage: str | None = None) -> str:
    """Run the pipeline for a config file (None: the offline default); returns the metrics table.

    `stage` runs one stage alone (its upstream must be in the store), e.g. to redo one stage.
    Resume = rerun: finished stages and shards are reused from the store, so a failed run (or a
    retried flow run) continues where it stopped. With `sft.backbones`, the pipeline runs once per
    backbone, then the backbones' scores are published side by side."""
    config = load_config(config_path, overrides)
    backbones = config.backbone_configs()
    for one in backbones.values():
        require_models(one)  # every model named is here, before any stage starts
        check_inputs(one)  # and every input file holds usable prompts
    tables = {}
    for i, (backbone, one) in enumerate(backbones.items(), 1):
        if len(backbones) > 1:
            get_run_logger().info("backbone %d of %d: %s", i, len(backbones), backbone)
        tables[backbone] = run_backbone(one, stage)
    if len(backbones) == 1:
        return tables[config.sft.base_model]
    if stage in (None, "evaluate", "report"):
        publish_backbones(backbone_markdown(backbone_scores(backbone_evaluations(config), config.report)))
    return "\n\n".join(f"{backbone}:\n{table}" for backbone, table in tables.items())


def run_backbone(config: PipelineConfig, stage: str | None) -> str:
    """The pipeline (or one stage) for one backbone's config, with its run record and summary."""
    logger = get_run_logger()
    store = open_store(config.store_root())
    plan = plan_pipeline(config)
    if stage is not None:
        check_upstream(store, plan, stage)
    before = {label: store.is_committed(ref) for label, ref in plan.outputs()}
    logger.info(
        "config %r, store %s: %d of %d stage outputs already done",
        config.name, config.store_root(), sum(before.values()), len(before),
    )
    started = time.perf_counter()
    table, rows, states = run_stages(config, plan, until=stage)
    elapsed = time.perf_counter() - started
    through = STAGE_NAMES if stage is None else STAGE_NAMES[: STAGE_NAMES.index(stage) + 1]
    ran = [job for job in plan.jobs if job.stage.name in through]
    stages = {job.label: {"fingerprint": job.ref.fingerprint, "state": states[job.label],
                          "reused": states[job.label] == "reused"} for job in ran}
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
    where = store.write_run(run_id, {"config": config.model_dump(), "stages": stages, "seconds": elapsed,
                                     "stage": stage})
    for label, info in stages.items():
        logger.info("  %-16s %s  %s", label, info["fingerprint"], info["state"])
    logger.info("run record: %s", where)
    publish_run(config.name, config.store_root(), where, stages, rows, elapsed)
    if stage not in (None, "evaluate", "report"):
        return f"stage {stage} done: {', '.join(str(job.ref) for job in plan.jobs_of(stage))}"
    logger.info("evaluation (image vs original prompt, mean ± std):\n%s", table)
    return table
