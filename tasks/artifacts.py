"""What the Prefect UI shows of a run: a table per output, progress of sharded stages, the
metrics and the report. An artifact is a view: its failure never fails a stage."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from prefect.artifacts import (
    create_link_artifact, create_markdown_artifact, create_progress_artifact, create_table_artifact,
    update_progress_artifact,
)

from semdpo_core.evaluate import METRIC_COLUMNS, format_metrics, summarize
from semdpo_core.schemas import EVALUATION, REPORT_SCORES
from semdpo_core.store import ArtifactStore, DatasetRef

log = logging.getLogger("semdpo.stages")


def artifact_key(name: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) for a stage or run name."""
    return "semdpo-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def publish_summary(ref: DatasetRef, manifest: dict[str, Any], key: str) -> None:
    """A table artifact per stage or training run (stable key) with its rows, parts and fingerprint."""
    row = {"stage": ref.stage, "fingerprint": ref.fingerprint, "rows": manifest["rows"], "parts": len(manifest["parts"])}
    row.update({k: v for k, v in manifest.get("meta", {}).items() if isinstance(v, (int, float, str))})
    try:
        create_table_artifact(key=key, table=[row], description=f"{ref.stage} output {ref}")
    except Exception as e:  # an artifact is a view; its failure must not fail the stage
        log.warning("could not publish the %s artifact: %s", ref.stage, e)


def stage_progress(name: str, percent: float) -> Any:
    """A progress artifact for a sharded stage (shown in the Prefect UI); None outside a run."""
    try:
        return create_progress_artifact(progress=percent, key=artifact_key(f"{name}-progress"),
                                        description=f"{name}: shards committed")
    except Exception as e:  # a view only: never fail the stage for it
        log.debug("no progress artifact for %s: %s", name, e)
        return None


def update_stage_progress(artifact_id: Any, percent: float) -> None:
    if artifact_id is not None:
        try:
            update_progress_artifact(artifact_id=artifact_id, progress=percent)
        except Exception as e:
            log.debug("progress artifact not updated: %s", e)


def publish_metrics(store: ArtifactStore, evaluation: DatasetRef) -> str:
    """The evaluation table as a markdown artifact (stable key `semdpo-metrics`); returns the table."""
    table = store.read_table(evaluation, EVALUATION, columns=METRIC_COLUMNS)
    text = format_metrics(summarize(table))
    create_markdown_artifact(
        key="semdpo-metrics",
        markdown=f"# Sem-DPO evaluation\n\nEvery image is scored against the original prompt "
        f"({table.num_rows} images).\n\n```\n{text}\n```\n",
        description="mean score per method and metric",
    )
    return text


def publish_report(store: ArtifactStore, ref: DatasetRef) -> None:
    """The report as Prefect artifacts with stable keys: `semdpo-report` (markdown), tables
    `semdpo-report-scores`, `-tokens`, `-head-to-head`, `-drift`, and a link per plot PNG."""
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
