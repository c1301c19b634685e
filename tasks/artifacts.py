"""What the Prefect UI shows of a run: a summary that says where to start (`semdpo-run`), the
metrics as a table, the report with every plot inline, a table per stage output and progress
of sharded stages. One key per artifact. An artifact is a view: its failure never fails a stage,
and an unreachable API never holds the run up (see `publish`).

Plots are embedded in markdown as data URIs: the UI renders images inside markdown, while a
link to a file on the worker's disk (file://) is neither rendered nor opened from an http page.
"""

from __future__ import annotations

import base64
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

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
T = TypeVar("T")

DIGITS = 4  # significant digits of a number in a table artifact
MAX_EMBEDDED_BYTES = 3_000_000  # a larger PNG is named, not embedded (requests past a proxy's limit fail)
ARTIFACT_RETRIES = 1  # Prefect's client retries a request 5 times over about a minute: too long to hold a stage
API_DOWN_SKIP_S = 30.0  # once the API is unreachable, artifacts are skipped this long before it is tried again
_api_down_until = 0.0


def publish(what: str, make: Callable[[], T], quiet: bool = False) -> T | None:
    """`make()` an artifact, as a view: a failure is logged (at debug level if `quiet`) and gives None.
    The run never waits on the UI: few client retries, and while the API is unreachable (a server
    restart) artifacts are skipped for API_DOWN_SKIP_S seconds at a time."""
    global _api_down_until
    if time.monotonic() < _api_down_until:
        return None
    try:
        with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: ARTIFACT_RETRIES}):
            return make()
    except httpx.TransportError as e:
        _api_down_until = time.monotonic() + API_DOWN_SKIP_S
        log.warning("could not publish the %s artifact: the Prefect API did not answer (%s); artifacts are skipped "
                    "for %.0f s, the run goes on (its results are in the store)", what, e, API_DOWN_SKIP_S)
    except Exception as e:  # an artifact is a view; its failure must not fail the stage
        (log.debug if quiet else log.warning)("could not publish the %s artifact: %s", what, e)
    return None


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
    publish(ref.stage, lambda: create_table_artifact(key=key, table=[row], description=f"{ref.stage} output {ref}"))


def progress_text(name: str, done: int, total: int) -> str:
    """A sharded stage's progress in words: which shard of how many."""
    return f"{name}: {done} of {total} shards committed"


def stage_progress(name: str, done: int, total: int) -> Any:
    """A progress artifact for a sharded stage (shown in the Prefect UI); None outside a run."""
    return publish(f"{name} progress", lambda: create_progress_artifact(
        progress=100 * done / total, key=artifact_key(f"{name}-progress"),
        description=progress_text(name, done, total)), quiet=True)


def update_stage_progress(artifact_id: Any, name: str, done: int, total: int) -> None:
    if artifact_id is not None:
        publish(f"{name} progress", lambda: update_progress_artifact(
            artifact_id=artifact_id, progress=100 * done / total, description=progress_text(name, done, total)),
            quiet=True)


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
    publish("metrics", lambda: create_table_artifact(
        key="semdpo-metrics", table=rows,
        description=f"mean ± std per method and metric; every one of {images} images scored "
                    "against the original prompt"))
    return text, rows


def publish_report(store: ArtifactStore, ref: DatasetRef) -> None:
    """The report as Prefect artifacts (a failure is logged, never fails the run)."""
    publish("report", lambda: publish_report_artifacts(store, ref))


def publish_backbones(markdown: str) -> None:
    """The backbones side by side (`semdpo-backbones`, paper Tables 5-7); a view, never a failure."""
    publish("backbones", lambda: create_markdown_artifact(
        key="semdpo-backbones", markdown=markdown,
        description="each backbone's scores, normalised within its datasets"))


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
    def make() -> Any:
        summary = HumanSummary.model_validate_json((folder / "report.json").read_text(encoding="utf-8"))
        text = human_eval_markdown(summary) + "\n" + image_markdown((folder / "rates.png").read_bytes(), RATES_CAPTION,
                                                                   str(folder / "rates.png"))
        return create_markdown_artifact(key="semdpo-human-eval", markdown=text, description=f"human study {folder}")

    publish("human study", make)


def publish_study(store: ArtifactStore, ref: DatasetRef) -> None:
    """The study's report (`semdpo-study`), its figure inline; a view, never a failure."""
    def make() -> Any:
        summary = StudySummary.model_validate_json(store.read_file(ref, "report.json"))
        figure = image_markdown(store.read_file(ref, "figure.png"), figure_caption(summary.spec),
                                store.file_url(ref, "figure.png"))
        text = study_markdown(summary) + figure_markdown(figure)
        return create_markdown_artifact(key="semdpo-study", markdown=text, description=f"study {ref}")

    publish("study", make)


def publish_run(config_name: str, store_root: str, record: str, states: dict[str, dict[str, Any]],
                metrics: list[dict[str, str]] | None, seconds: float) -> None:
    """The run's summary (`semdpo-run`): where to start, the metrics, what each stage did and
    where everything is. A view only: a failure is logged."""
    markdown = run_markdown(config_name, store_root, record, states, metrics, seconds)
    publish("run summary", lambda: create_markdown_artifact(key="semdpo-run", markdown=markdown,
                                                            description="start here"))


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
