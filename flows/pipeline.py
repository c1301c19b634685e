"""The Sem-DPO pipeline as one Prefect flow: prompts -> SFT -> candidates -> render -> label
(-> fidelity) -> pairs -> weigh -> reference -> train (every method) -> evaluate. Every stage is
a cached task (sharded stages: one task per shard) keyed by its fingerprint; a rerun reuses
whatever the store already holds.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from prefect import flow, get_run_logger

from semdpo_core.config import PipelineConfig, load_config
from semdpo_core.evaluate import METRIC_COLUMNS, format_metrics, summarize
from semdpo_core.plan import STAGES, USES_DISTANCE, USES_FIDELITY, USES_REFERENCE, flat_refs, plan_pipeline
from semdpo_core.schemas import EVALUATION, REPORT_SCORES
from tasks.candidates import candidates as candidates_task
from tasks.candidates import num_shards as candidates_shards
from tasks.common import artifact_key, open_store
from tasks.evaluate import evaluate as evaluate_task
from tasks.label import fidelity as fidelity_task
from tasks.label import label as label_task
from tasks.label import pairs as pairs_task
from tasks.prompts import prompts as prompts_task
from tasks.render import render as render_task
from tasks.sft import sft as sft_task
from tasks.reference import reference as reference_task
from tasks.report import report as report_task
from tasks.train import train as train_task
from tasks.weigh import num_shards as pair_shards
from tasks.weigh import weigh as weigh_task


class UpstreamMissing(RuntimeError):
    """A stage was asked to run alone before the stages it reads from."""


def check_upstream(store: Any, plan: dict[str, Any], stage: str) -> None:
    """Running one stage alone needs every stage before it in the store."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    before = set(STAGES[: STAGES.index(stage)])
    missing = [label for label, ref in flat_refs(plan) if label.split(":")[0] in before and not store.is_committed(ref)]
    if missing:
        raise UpstreamMissing(
            f"stage {stage!r} needs {', '.join(missing)} first: run the pipeline (or those stages) before it"
        )


def run_stages(config: PipelineConfig, plan: dict[str, Any], until: str | None = None) -> str | None:
    """Each stage in order, through `until` (default: all), passing only store references between
    them. Sharded stages run one task per shard: candidates shard the training prompts, render,
    label and fidelity follow the candidates' shards, weigh and reference shard the pairs.
    Returns the metrics table once the evaluation has run, else None."""
    reached = lambda stage: stage == until  # noqa: E731
    prompts = prompts_task(config, plan["prompts"])
    if reached("prompts"):
        return
    sft = sft_task(config, plan["sft"])
    if reached("sft"):
        return
    candidates = candidates_task(
        config, plan["candidates"], candidates_shards(config, prompts), prompts=prompts, sft=sft
    )
    if reached("candidates"):
        return
    shards = open_store(config).num_parts(candidates)
    images = render_task(config, plan["render"], shards, candidates=candidates)
    if reached("render"):
        return
    rewards = label_task(config, plan["label"], shards, candidates=candidates, images=images)
    if reached("label"):
        return
    fidelity = None
    if plan["fidelity"] is not None:
        fidelity = fidelity_task(config, plan["fidelity"], shards, candidates=candidates, images=images)
    if reached("fidelity"):
        return
    pairs = pairs_task(config, plan["pairs"], candidates=candidates, rewards=rewards)
    if reached("pairs"):
        return
    weights = weigh_task(config, plan["weigh"], pair_shards(config, pairs), pairs=pairs)
    if reached("weigh"):
        return
    reference = None
    if plan["reference"] is not None:
        reference = reference_task(config, plan["reference"], pair_shards(config, pairs), sft=sft, pairs=pairs)
    if reached("reference"):
        return
    trained = {
        run.label: train_task(
            config, plan["train"][run.label], task_name=f"train-{run.label}", run=run, sft=sft,
            pairs=weights if run.method in USES_DISTANCE else pairs,
            reference=reference if run.method in USES_REFERENCE else None,
            fidelity=fidelity if run.method in USES_FIDELITY else None,
        )
        for run in plan["runs"]
    }
    if reached("train"):
        return
    evaluation = evaluate_task(
        config, plan["evaluate"], len(plan["evaluated"]), prompts=prompts, methods=plan["evaluated"],
        checkpoints={"sft": sft, **trained},
    )
    metrics = publish_metrics(open_store(config), plan)
    if reached("evaluate"):
        return metrics
    report_task(config, plan["report"], evaluation=evaluation)
    publish_report(open_store(config), plan["report"])
    return metrics


def publish_metrics(store: Any, plan: dict[str, Any]) -> str:
    """The evaluation table as a markdown artifact (stable key `semdpo-metrics`); returns the table."""
    from prefect.artifacts import create_markdown_artifact

    evaluation = store.read_table(plan["evaluate"], EVALUATION, columns=METRIC_COLUMNS)
    table = format_metrics(summarize(evaluation))
    create_markdown_artifact(
        key="semdpo-metrics",
        markdown=f"# Sem-DPO evaluation\n\nEvery image is scored against the original prompt "
        f"({evaluation.num_rows} images).\n\n```\n{table}\n```\n",
        description="mean score per method and metric",
    )
    return table


def publish_report(store: Any, ref: Any) -> None:
    """The report as Prefect artifacts with stable keys: `semdpo-report` (markdown), tables
    `semdpo-report-scores`, `-tokens`, `-head-to-head`, `-drift`, and a link per plot PNG."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    tables = json.loads(store.read_file(ref, "report.json"))
    create_markdown_artifact(key="semdpo-report", markdown=store.read_file(ref, "report.md").decode(),
                             description="the paper's tables for this run")
    scores = store.read_table(ref, REPORT_SCORES).to_pylist()
    create_table_artifact(key="semdpo-report-scores", table=scores, description="mean score per dataset x method x metric")
    create_table_artifact(key="semdpo-report-tokens", table=[{k: v for k, v in t.items() if k != "median_by_dataset"}
                                                             for t in tables["tokens"]], description="rewrite token length")
    if tables["head_to_head"]:
        create_table_artifact(key="semdpo-report-head-to-head", table=tables["head_to_head"], description="win/tie/loss")
    if tables["drift"]["methods"]:
        create_table_artifact(key="semdpo-report-drift", table=tables["drift"]["methods"],
                              description=f"Proposition 2, eps = {tables['drift']['epsilon']:.4f}")
    for name in store.manifest(ref)["meta"].get("plots", []):
        create_link_artifact(key=artifact_key("plot-" + name.removesuffix(".png")), link=store.file_url(ref, f"plots/{name}"),
                             link_text=name)


@flow(name="semdpo-pipeline")
def pipeline(config_path: str | None = None, overrides: list[str] | None = None, stage: str | None = None) -> str:
    """Run the pipeline for a config file (None: the offline default); returns the metrics table.

    `stage` runs one stage alone (its upstream must be in the store), e.g. to redo one stage.
    Resume = rerun: finished stages and shards are reused from the store, so a failed run (or a
    retried flow run) continues where it stopped."""
    logger = get_run_logger()
    config = load_config(config_path, overrides)
    store = open_store(config)
    plan = plan_pipeline(config)
    if stage is not None:
        check_upstream(store, plan, stage)
    before = {label: store.is_committed(ref) for label, ref in flat_refs(plan)}
    logger.info(
        "config %r, store %s: %d of %d stage outputs already done",
        config.name, config.store_root(), sum(before.values()), len(before),
    )
    started = time.perf_counter()
    table = run_stages(config, plan, until=stage)
    elapsed = time.perf_counter() - started
    through = STAGES if stage is None else STAGES[: STAGES.index(stage) + 1]
    ran = [(label, ref) for label, ref in flat_refs(plan) if label.split(":")[0] in through]
    stages = {label: {"fingerprint": ref.fingerprint, "reused": before[label]} for label, ref in ran}
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
    where = store.write_run(run_id, {"config": config.model_dump(), "stages": stages, "seconds": elapsed, "stage": stage})
    for label, info in stages.items():
        logger.info("  %-16s %s  %s", label, info["fingerprint"], "reused" if info["reused"] else "computed")
    logger.info("run record: %s", where)
    if stage not in (None, "evaluate", "report"):
        return f"stage {stage} done: {plan[stage] if not isinstance(plan[stage], dict) else list(plan[stage].values())}"
    logger.info("evaluation (image vs original prompt, mean ± std):\n%s", table)
    return table
