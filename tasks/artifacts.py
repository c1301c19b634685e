"""What the Prefect UI shows of a run: a summary that says where to start (`semdpo-run`), the
metrics as a table, the report with every plot inline, a table per stage output and progress
of sharded stages. One key per artifact. An artifact is a view: its failure never fails a stage.

Plots are embedded in markdown as data URIs: the UI renders images inside markdown, while a
link to a file on the worker's disk (file://) is neither rendered nor opened from an http page.
"""

from __future__ import annotations

import base64
import logging
import re
from pathlib import Path
from typing import Any

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from semdpo_core.human_eval.report import RATES_CAPTION
from semdpo_core.human_eval.report import markdown as human_eval_markdown
from semdpo_core.human_eval.statistics import HumanSummary
from semdpo_core.pipeline.schemas import EVALUATION, REPORT_SCORES
from semdpo_core.stages.evaluate import (
    METRIC_COLUMNS,
    format_metrics,
    metric_rows,
    summarize,
)
from semdpo_core.stages.report.document import Report
from semdpo_core.stages.report.markdown import tables_markdown
from semdpo_core.store.artifact_store import ArtifactStore, DatasetRef
from semdpo_core.study.study_report import StudySummary, figure_caption, figure_markdown
from semdpo_core.study.study_report import markdown as study_markdown

log = logging.getLogger("semdpo.stages")

DIGITS = 4  # significant digits of a number in a table artifact
MAX_EMBEDDED_BYTES = 3_000_000  # a larger PNG is named, not embedded (requests past a proxy's limit fail)


def artifact_key(name: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) for a stage or run name."""
    return "semdpo-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def stage_key(task_name: str) -> str:
    """The key of a stage output's table (`semdpo-stage-...`), apart from the report's own keys."""
    return artifact_key("stage-" + task_name)


def rounded(value: Any) -> Any:
    """A float cut to DIGITS significant digits for display (-0.3149926634505391 -> -0.315); the
    rest as it is."""
    return float(f"{value:.{DIGITS}g}") if isinstance(value, float) else value


def rounded_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every float of every row `rounded`."""
    return [{k: rounded(v) for k, v in row.items()} for row in rows]


def image_markdown(png: bytes, caption: str, where: str) -> str:
    """A PNG inline in markdown, with its caption under it (too large a PNG: where it is)."""
    if len(png) > MAX_EMBEDDED_BYTES:
        return f"*{caption}* ({len(png) / 1e6:.1f} MB, not embedded: `{where}`)\n"
    return f"![{caption}](data:image/png;base64,{base64.b64encode(png).decode()})\n\n*{caption}*\n"


def publish_summary(ref: DatasetRef, manifest: dict[str, Any], key: str) -> None:
    """A table artifact per stage output (stable key) with its rows, parts and fingerprint."""
    row = {"stage": ref.stage, "fingerprint": ref.fingerprint, "rows": manifest["rows"],
           "parts": len(manifest["parts"])}
    row.update({k: rounded(v) for k, v in manifest.get("meta", {}).items() if isinstance(v, (int, float, str))})
    try:
        create_table_artifact(key=key, table=[row], description=f"{ref.stage} output {ref}")
    except Exception as e:  # an artifact is a view; its failure must not fail the stage
        log.warning("could not publish the %s artifact: %s", ref.stage, e)


def progress_text(name: str, done: int, total: int) -> str:
    """A sharded stage's progress in words: which shard of how many."""
    return f"{name}: {done} of {total} shards committed"


def stage_progress(name: str, done: int, total: int) -> Any:
    """A progress artifact for a sharded stage (shown in the Prefect UI); None outside a run."""
    try:
        return create_progress_artifact(progress=100 * done / total, key=artifact_key(f"{name}-progress"),
                                        description=progress_text(name, done, total))
    except Exception as e:  # a view only: never fail the stage for it
        log.debug("no progress artifact for %s: %s", name, e)
        return None


def update_stage_progress(artifact_id: Any, name: str, done: int, total: int) -> None:
    if artifact_id is not None:
        try:
            update_progress_artifact(artifact_id=artifact_id, progress=100 * done / total,
                                     description=progress_text(name, done, total))
        except Exception as e:
            log.debug("progress artifact not updated: %s", e)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows (dicts with the same keys) as a markdown table."""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(row[k]) for k in header) + " |" for row in rows])


def publish_metrics(store: ArtifactStore, evaluation: DatasetRef) -> tuple[str, list[dict[str, str]]]:
    """The evaluation as a table artifact (`semdpo-metrics`, mean ± std); returns it as text and rows."""
    table = store.read_table(evaluation, EVALUATION, columns=METRIC_COLUMNS)
    metrics = summarize(table)
    rows, text, images = metric_rows(metrics), format_metrics(metrics), table.num_rows
    try:
        create_table_artifact(key="semdpo-metrics", table=rows,
                              description=f"mean ± std per method and metric; every one of {images} images scored "
                                          "against the original prompt")
    except Exception as e:  # a view only: the run's result stands
        log.warning("could not publish the metrics artifact: %s", e)
    return text, rows


def publish_report(store: ArtifactStore, ref: DatasetRef) -> None:
    """The report as Prefect artifacts (a failure is logged, never fails the run)."""
    try:
        publish_report_artifacts(store, ref)
    except Exception as e:  # a view only: the report is in the store whatever happens here
        log.warning("could not publish the report artifacts: %s", e)


def publish_backbones(markdown: str) -> None:
    """The backbones side by side (`semdpo-backbones`, paper Tables 5-7); a view, never a failure."""
    try:
        create_markdown_artifact(key="semdpo-backbones", markdown=markdown,
                                 description="each backbone's scores, normalised within its datasets")
    except Exception as e:  # a view only: every backbone's report is in the store
        log.warning("could not publish the backbones artifact: %s", e)


def publish_report_artifacts(store: ArtifactStore, ref: DatasetRef) -> None:
    """One key each: `semdpo-report` (markdown), tables `semdpo-report-scores`, `-tokens`,
    `-head-to-head`, `-drift`, and `semdpo-plot-NAME` per plot (the image inline, its caption as
    description; the report names them, so that no image is sent twice)."""
    report = Report.from_json(store.read_file(ref, "report.json"))
    scores = store.read_table(ref, REPORT_SCORES)
    plots = {name: store.read_file(ref, f"plots/{name}") for name in store.manifest(ref)["meta"].get("plots", [])}
    keys = {name: artifact_key("plot-" + name.removesuffix(".png")) for name in plots}
    listing = "".join(f"- `{keys[name]}`: {report.plots.get(name, name)}\n" for name in plots)
    create_markdown_artifact(key="semdpo-report",
                             markdown=tables_markdown(scores, report) + "\n## Plots (each its own artifact)\n\n"
                             + listing,
                             description="the paper's tables for this run; its figures are the semdpo-plot-* artifacts")
    create_table_artifact(key="semdpo-report-scores", table=rounded_rows(scores.to_pylist()),
                          description="mean score per dataset x method x metric (paper Tables 5-7)")
    create_table_artifact(key="semdpo-report-tokens", table=rounded_rows([t.columns() for t in report.tokens]),
                          description="rewrite length in tokens (paper Tables 1-2)")
    if report.head_to_head:
        create_table_artifact(key="semdpo-report-head-to-head",
                              table=rounded_rows([h.columns() for h in report.head_to_head]),
                              description=f"{report.focus} against each method: win / tie / loss (paper Figure 4)")
    if report.drift.methods:
        create_table_artifact(key="semdpo-report-drift",
                              table=rounded_rows([d.columns() for d in report.drift.methods]),
                              description=f"Proposition 2, eps = {report.drift.epsilon:.4f}")
    for name, png in plots.items():
        caption = report.plots.get(name, name)
        create_markdown_artifact(key=keys[name],
                                 markdown=image_markdown(png, caption, store.file_url(ref, f"plots/{name}")),
                                 description=caption)


def publish_human_eval(folder: Path) -> None:
    """A human study's report (`semdpo-human-eval`), its plot inline; a view, never a failure."""
    try:
        summary = HumanSummary.model_validate_json((folder / "report.json").read_text(encoding="utf-8"))
        text = human_eval_markdown(summary) + "\n" + image_markdown((folder / "rates.png").read_bytes(), RATES_CAPTION,
                                                                   str(folder / "rates.png"))
        create_markdown_artifact(key="semdpo-human-eval", markdown=text, description=f"human study {folder}")
    except Exception as e:  # a view only: the report's files are in the folder
        log.warning("could not publish the human study artifact: %s", e)


def publish_study(store: ArtifactStore, ref: DatasetRef) -> None:
    """The study's report (`semdpo-study`), its figure inline; a view, never a failure."""
    try:
        summary = StudySummary.model_validate_json(store.read_file(ref, "report.json"))
        figure = image_markdown(store.read_file(ref, "figure.png"), figure_caption(summary.spec),
                                store.file_url(ref, "figure.png"))
        text = study_markdown(summary) + figure_markdown(figure)
        create_markdown_artifact(key="semdpo-study", markdown=text, description=f"study {ref}")
    except Exception as e:  # a view only: the study's results are in the store
        log.warning("could not publish the study artifact: %s", e)


def publish_run(config_name: str, store_root: str, record: str, states: dict[str, dict[str, Any]],
                metrics: list[dict[str, str]] | None, seconds: float) -> None:
    """The run's summary (`semdpo-run`): where to start, the metrics, what each stage did and
    where everything is. A view only: a failure is logged."""
    try:
        markdown = run_markdown(config_name, store_root, record, states, metrics, seconds)
        create_markdown_artifact(key="semdpo-run", markdown=markdown, description="start here")
    except Exception as e:
        log.warning("could not publish the run summary artifact: %s", e)


def run_markdown(config_name: str, store_root: str, record: str, states: dict[str, dict[str, Any]],
                 metrics: list[dict[str, str]] | None, seconds: float) -> str:
    """The run summary's markdown."""
    lines = [f"# Sem-DPO run: {config_name}", "",
             f"{len(states)} stage outputs in {seconds:.0f} s; store `{store_root}`; run record `{record}`.", ""]
    if metrics:
        lines += ["## Metrics (every image against the original prompt, mean ± std)", "", markdown_table(metrics), ""]
    lines += ["## Where to look", "",
              "- `semdpo-report`: the paper's tables; `semdpo-plot-*`: its figures (`semdpo-plot-samples`: images per "
              "method, `semdpo-plot-training-curves`: loss, margin, accuracy, weight per step)",
              "- `semdpo-report-scores`, `-tokens`, `-head-to-head`, `-drift`: the report's tables",
              "- `semdpo-metrics`: the table above; `semdpo-stage-*`: each stage output (rows, fingerprint)", "",
              "## Stages", ""]
    if states:
        lines.append(markdown_table([{"output": label, "state": s["state"], "fingerprint": s["fingerprint"]}
                                     for label, s in states.items()]))
    return "\n".join(lines) + "\n"
