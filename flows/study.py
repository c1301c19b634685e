"""A study as one Prefect flow (`semdpo-study`): every run of the grid is the pipeline flow as a
subflow (its stages reused from the store wherever runs share them), its endpoints committed to
the study's dataset as it finishes, then the study's report. A rerun skips every committed run:
a killed study loses only the run in progress."""

from __future__ import annotations

import time

import pyarrow as pa
from prefect import flow, get_run_logger

from flows.pipeline import pipeline
from semdpo_core.store.artifact_store import open_store
from semdpo_core.study.measure import STUDY_ROWS, run_rows
from semdpo_core.study.plan import StudyPlan, plan_study
from semdpo_core.study.spec import load_spec
from semdpo_core.study.study_report import report_files
from tasks.artifacts import publish_study, stage_progress, update_stage_progress


def run_grid(study: StudyPlan) -> float:
    """Each run not yet committed: the pipeline, then its rows; returns the seconds spent."""
    logger = get_run_logger()
    store = open_store(study.store_root)
    runs = study.runs
    done = {p.run.index for p in runs if store.shard_is_done(study.ref, p.run.index)}
    logger.info("study %s: %d runs, %d already done", study.ref, len(runs), len(done))
    progress = stage_progress("study", len(done), len(runs))
    started, finished = time.perf_counter(), len(done)
    for planned in runs:
        run = planned.run
        if run.index in done:
            continue
        logger.info("run %d of %d: %s", run.index + 1, len(runs), run.name)
        began = time.perf_counter()
        pipeline(config_path=study.spec.base, overrides=list(run.overrides))
        rows = run_rows(store, planned.plan, run, planned.arms(study.spec), study.spec.metrics,
                        time.perf_counter() - began)
        store.write_part(study.ref, run.index, rows, STUDY_ROWS)
        finished += 1
        update_stage_progress(progress, "study", finished, len(runs))
    return time.perf_counter() - started


@flow(name="semdpo-study")
def study(spec_path: str) -> str:
    """Run a study's grid (a YAML spec, e.g. configs/drift_study.yaml) and write its report; returns
    where the report is."""
    spec = load_spec(spec_path)
    plan = plan_study(spec)
    store = open_store(plan.store_root)
    shape = spec.model_dump(mode="json", include={"name", "baseline", "primary", "statistics"})
    state = store.check(plan.ref)  # a damaged part or file is withdrawn (its run measured again)
    if state == "done" and store.manifest(plan.ref)["meta"].get("report") == shape:
        get_run_logger().info("study %s is complete: nothing to run", plan.ref)
    else:
        seconds = run_grid(plan) if state != "done" else 0.0
        table = pa.concat_tables([store.read_shard(plan.ref, p.run.index, STUDY_ROWS) for p in plan.runs])
        store.commit(plan.ref, STUDY_ROWS, len(plan.runs), files=report_files(table, spec, len(plan.runs)),
                     meta={"runs": len(plan.runs), "report": shape, "seconds_this_invocation": round(seconds, 1)})
    publish_study(store, plan.ref)
    where = store.file_url(plan.ref, "report.md")
    get_run_logger().info("study report: %s", where)
    return where
