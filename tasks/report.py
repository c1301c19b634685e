"""Report stage: the paper's tables and figures from the evaluation rows, kept in the store
(REPORT_SCORES as Parquet; report.md, report.json and the PNG plots as files) and published as
Prefect artifacts with stable keys by the flow."""

from __future__ import annotations

import json
import logging

from semdpo_core.config import PipelineConfig
from semdpo_core.report import build_report, markdown
from semdpo_core.schemas import EVALUATION, REPORT_SCORES
from semdpo_core.store import DatasetRef
from tasks.common import open_store, stage_task

log = logging.getLogger("semdpo.report")


@stage_task("report")
def report(config: PipelineConfig, ref: DatasetRef, evaluation: DatasetRef) -> DatasetRef:
    store = open_store(config)
    rows = store.read_table(evaluation, EVALUATION)
    scores, tables, plots = build_report(rows, config.report, config.evaluate.scorers, config.weigh.encoder)
    links = {name: store.file_url(ref, f"plots/{name}") for name in plots}
    files = {f"plots/{name}": data for name, data in plots.items()}
    files["report.md"] = markdown(scores, tables, links).encode()
    files["report.json"] = json.dumps(tables, indent=2, sort_keys=True).encode()
    log.info("report: %d score rows, %d plots, %d head-to-head rows", scores.num_rows, len(plots), len(tables["head_to_head"]))
    return store.write_dataset(ref, REPORT_SCORES, scores, files=files, meta={"plots": sorted(plots)})
