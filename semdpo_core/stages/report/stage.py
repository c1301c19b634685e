"""The report stage: the paper's tables and figures, computed from the evaluate stage's rows, written
as REPORT_SCORES with report.md, report.json and the plots beside it."""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa

from semdpo_core.pipeline.config import ScorerConfig
from semdpo_core.pipeline.schemas import EVALUATION, TRAIN_LOG
from semdpo_core.pipeline.stage_context import Output, StageContext
from semdpo_core.stages.report.document import Report, ScorerNote
from semdpo_core.stages.report.markdown import markdown
from semdpo_core.stages.report.plots import (
    sample_grid,
    scatter_png,
    sweep_png,
    training_curves_png,
)
from semdpo_core.stages.report.significance import comparisons_of, paired_tests
from semdpo_core.stages.report.tables import (
    AVG,
    alpha_selection,
    drift_stats,
    head_to_head,
    meaning_drift,
    normalised_methods,
    ordered,
    report_focus,
    score_table,
    sweep_alpha,
    token_stats,
)

log = logging.getLogger("semdpo.report")


def build_report(
    evaluation: pa.Table, settings: Any, scorers: dict[str, ScorerConfig], encoder: str = "",
    validation: pa.Table | None = None,
) -> tuple[pa.Table, Report, dict[str, bytes]]:
    """(REPORT_SCORES table, the report's other tables, {plot file name: PNG bytes}).

    `settings` is a ReportConfig; `scorers` maps each metric to its ScorerConfig (named in the
    report); `encoder` is the weigh stage's text encoder, which measured `semantic_distance`;
    `validation` holds the sweep runs' rows on the validation prompts when alpha is chosen."""
    methods = ordered(evaluation.column("method").to_pylist())
    datasets = ordered(evaluation.column("dataset").to_pylist())
    selection = alpha_selection(validation, evaluation, settings.average_over) if validation is not None else None
    focus = report_focus(methods, settings, selection)
    normalised = normalised_methods(methods, settings, focus)
    scores = score_table(evaluation, settings.average_over, normalised)
    report = Report(
        scorers={name: ScorerNote(**s.model_dump(exclude_none=True)) for name, s in scorers.items()},
        datasets=datasets, methods=methods, focus=focus, normalised_over=normalised,
        tokens=token_stats(evaluation),
        head_to_head=head_to_head(evaluation, focus, settings.tie_tolerance) if focus else [],
        drift=drift_stats(evaluation, settings.drift_epsilon),
        encoder=encoder,
        meaning_drift=meaning_drift(evaluation),
        paired_tests=paired_tests(evaluation, comparisons_of(methods, focus), settings.tie_tolerance),
        alpha_selection=selection,
    )
    plots = score_plots(scores, report, settings)
    grid = sample_grid(evaluation, settings.sample_prompts)
    if grid is not None:
        plots["samples.png"] = grid
        report.plots["samples.png"] = ("sample images: a row per test prompt, a column per method; `human` is the "
                                       "original prompt's image, every other column that method's rewrite's image")
    return scores, report, plots


def score_plots(scores: pa.Table, report: Report, settings: Any) -> dict[str, bytes]:
    """Figure 3's scatter per dataset and preference metric, and Figure 5's alpha sweep when there
    is one; each plot's caption goes into `report.plots`."""
    x, focus = settings.semantic_metric, report.focus
    metrics = ordered([r["metric"] for r in scores.to_pylist() if r["metric"] != AVG])
    sweep = [m for m in report.methods if sweep_alpha(m) is not None]
    plots: dict[str, bytes] = {}
    for dataset in report.datasets:
        for y in [m for m in settings.preference_metrics if m in metrics]:
            if x not in metrics:
                continue
            name = f"scatter-{dataset}-{x}-vs-{y}.png"
            plots[name] = scatter_png(scores, dataset, x, y, focus)
            report.plots[name] = (f"{dataset}: mean {x} against mean {y} per method; upper right is better (paper "
                                  f"Figure 3)" + (f"; the star is {focus}" if focus else ""))
            if len(sweep) > 1:
                name = f"alpha-sweep-{dataset}-{x}-vs-{y}.png"
                plots[name] = sweep_png(scores, dataset, x, y)
                report.plots[name] = (f"{dataset}: Sem-DPO's alpha sweep, mean {x} against mean {y}, a point per "
                                      "alpha (paper Figure 5)")
    return plots


def report_stage(ctx: StageContext) -> Output:
    """REPORT_SCORES, with report.md, report.json and the PNG plots as the dataset's files."""
    s = ctx.settings
    rows = ctx.store.read_table(ctx.inputs["evaluate"], EVALUATION)
    scorers = {name: ScorerConfig.model_validate(dict(scorer)) for name, scorer in s.scorers.items()}
    validation = ctx.store.read_table(ctx.inputs["validate"], EVALUATION) if "validate" in ctx.inputs else None
    scores, report, plots = build_report(rows, s.report, scorers, s.semantic_encoder, validation)
    logs = {role.removeprefix("train:"): ctx.store.read_table(ref, TRAIN_LOG)
            for role, ref in ctx.inputs.items() if role.startswith("train:")}
    if logs:
        plots["training-curves.png"], window = training_curves_png(logs)
        report.plots["training-curves.png"] = (
            "training curves: loss, reward margin (beta x log-ratio margin), reward accuracy, mean semantic weight, "
            "Kish's effective sample size of the step's pair weights ((sum W)^2 / sum W^2) and learning rate "
            f"per optimizer step, a line per run, "
            f"each a moving average over {window} steps")
    links = {name: f"plots/{name}" for name in plots}  # beside report.md in the dataset's files
    files = {f"plots/{name}": data for name, data in plots.items()}
    files["report.md"] = markdown(scores, report, links).encode()
    files["report.json"] = report.to_json()
    log.info("report: %d score rows, %d plots, %d head-to-head rows", scores.num_rows, len(plots),
             len(report.head_to_head))
    return Output(scores, files=files, meta={"plots": sorted(plots)})
