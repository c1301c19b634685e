"""The study's report, from its rows (STUDY_ROWS): the measured dose, each arm's endpoints, each
arm minus the baseline per dose (mean over seeds, interval, signed-rank test), the slope over
doses, the seeds whose rewriter collapsed (when the spec asks), and a figure of the differences
against the dose, a line per arm."""

from __future__ import annotations

import io
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel

from semdpo_core.stages.report.tables import DISTANCE
from semdpo_core.study.seed_statistics import dose_slope, paired_difference
from semdpo_core.study.spec import StudySpec

LOSES = "loses_content"
LOOPS = "loops"


class DoseRow(BaseModel):
    """The dose at one share: how many chosen rewrites lose content, and how many were injected."""

    kind: str
    share: float
    seeds: int
    chosen_loses_content: float
    chosen_injected: float


class MeansRow(BaseModel):
    """An arm's endpoints at one dose: the mean over seeds of its mean over test prompts."""

    kind: str
    share: float
    arm: str
    seeds: int
    endpoints: dict[str, float]


class DifferenceRow(BaseModel):
    """An arm minus the baseline on one endpoint at one dose, over seeds."""

    kind: str
    share: float
    arm: str
    metric: str
    seeds: int
    mean: float
    low: float
    high: float
    p_value: float
    higher: int
    per_seed: list[float]


class SlopeRow(BaseModel):
    """How an arm's difference from the baseline changes per unit of dose."""

    kind: str
    arm: str
    metric: str
    slope: float
    low: float
    high: float


class CollapseRow(BaseModel):
    """An arm's seeds at one dose that collapsed: looping rewrites, or far below the reference arm."""

    kind: str
    share: float
    arm: str
    seeds: int
    collapsed: list[int]  # the seeds
    loops: list[float]  # per seed: share of test rewrites in a loop
    drop: list[float]  # per seed: the reference's primary endpoint minus the arm's


class StudySummary(BaseModel):
    """What report.json holds and the report's readers (markdown, the Prefect UI) read by attribute."""

    spec: StudySpec
    runs: int
    run_seconds: float  # summed over runs, each as the invocation that finished it measured it
    dose: list[DoseRow] = []
    means: list[MeansRow] = []
    differences: list[DifferenceRow] = []
    slopes: list[SlopeRow] = []
    collapses: list[CollapseRow] = []


def value(row: dict[str, Any], metric: str) -> float:
    """One row's value of an endpoint: a score, the content loss or loop (0/1) or the MiniLM distance."""
    if metric in (LOSES, LOOPS):
        return float(row[metric])
    if metric == DISTANCE:
        return float(row[DISTANCE])
    return dict(row["scores"])[metric]


def kinds_of(spec: StudySpec) -> list[str]:
    return list(dict.fromkeys(d.kind for d in spec.doses if d.share > 0)) or ["replace"]


def shares_of(spec: StudySpec, kind: str) -> list[float]:
    """A kind's doses in order, share 0 (the plain config, shared by every kind) included."""
    return sorted({0.0} & {d.share for d in spec.doses} | {d.share for d in spec.doses if d.kind == kind})


def grouped(rows: pa.Table) -> dict[tuple[float, str, int], list[dict[str, Any]]]:
    """{(share, kind or '' at share 0, seed): rows}; arms are split later."""
    out: dict[tuple[float, str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows.to_pylist():
        out[(r["share"], "" if r["share"] == 0 else r["kind"], r["seed"])].append(r)
    return out


def per_prompt(rows: list[dict[str, Any]], arm: str, metric: str) -> dict[tuple[str, str], float]:
    """An arm's value on each of its test prompts, by (dataset, prompt id)."""
    return {(r["dataset"], r["prompt_id"]): value(r, metric) for r in rows if r["arm"] == arm}


def paired(rows: list[dict[str, Any]], arm: str, baseline: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The arm's and the baseline's values on the same test prompts, in one order; an error when the
    two arms were evaluated on different prompts."""
    mine, theirs = per_prompt(rows, arm, metric), per_prompt(rows, baseline, metric)
    if mine.keys() != theirs.keys():
        raise ValueError(f"{arm} and {baseline} were evaluated on different test prompts "
                         f"({len(mine.keys() ^ theirs.keys())} differ)")
    keys = sorted(mine)
    return np.array([mine[k] for k in keys]), np.array([theirs[k] for k in keys])


def summarise(rows: pa.Table, spec: StudySpec, runs: int) -> StudySummary:
    """Every table of the report."""
    groups = grouped(rows)
    seeds_at = defaultdict(list)
    for share, kind, seed in groups:
        seeds_at[(share, kind)].append(seed)
    stats = spec.statistics
    endpoints = [*spec.metrics, LOSES, LOOPS, DISTANCE]
    out = StudySummary(spec=spec, runs=runs, run_seconds=run_seconds(rows))
    for kind in kinds_of(spec):
        per_seed_diffs: dict[str, dict[float, dict[int, float]]] = defaultdict(dict)
        for share in shares_of(spec, kind):
            key = (share, "" if share == 0 else kind)
            seeds = sorted(seeds_at.get(key, []))
            if not seeds:
                continue
            first = [groups[(*key, s)][0] for s in seeds]
            out.dose.append(DoseRow(kind=kind, share=share, seeds=len(seeds),
                                    chosen_loses_content=float(np.mean([r["chosen_loses_content"] for r in first])),
                                    chosen_injected=float(np.mean([r["chosen_injected"] for r in first]))))
            if spec.collapse is not None:
                out.collapses += collapse_rows(spec, kind, share, {s: groups[(*key, s)] for s in seeds})
            for arm in spec.arms:
                means = {m: float(np.mean([np.mean(list(per_prompt(groups[(*key, s)], arm, m).values()))
                                           for s in seeds])) for m in endpoints}
                out.means.append(MeansRow(kind=kind, share=share, arm=arm, seeds=len(seeds), endpoints=means))
                if arm == spec.baseline:
                    continue
                for metric in (spec.primary, LOSES):
                    pairs = {s: paired(groups[(*key, s)], arm, spec.baseline, metric) for s in seeds}
                    d = paired_difference({s: p[0] for s, p in pairs.items()}, {s: p[1] for s, p in pairs.items()},
                                          stats.resamples, stats.confidence, stats.seed)
                    out.differences.append(DifferenceRow(kind=kind, share=share, arm=arm, metric=metric, seeds=d.seeds,
                                                         mean=d.mean, low=d.low, high=d.high, p_value=d.p_value,
                                                         higher=d.higher, per_seed=list(d.per_seed)))
                    if metric == spec.primary:
                        per_seed_diffs[arm][share] = dict(zip(seeds, d.per_seed))
        for arm, by_dose in per_seed_diffs.items():
            if len(by_dose) > 1:
                s = dose_slope(by_dose, stats.resamples, stats.confidence, stats.seed)
                out.slopes.append(SlopeRow(kind=kind, arm=arm, metric=spec.primary, slope=s.slope, low=s.low,
                                           high=s.high))
    return out


def collapse_rows(spec: StudySpec, kind: str, share: float,
                  rows_of: dict[int, list[dict[str, Any]]]) -> list[CollapseRow]:
    """Per arm at one dose: each seed's share of looping rewrites and its fall below the reference
    arm, and the seeds past either threshold."""
    rule = spec.collapse
    assert rule is not None
    out = []
    for arm in [a for a in spec.arms if a != rule.reference]:
        loops = {s: float(np.mean(list(per_prompt(rows, arm, LOOPS).values()))) for s, rows in rows_of.items()}
        drop = {s: float(np.mean(list(per_prompt(rows, rule.reference, spec.primary).values()))
                         - np.mean(list(per_prompt(rows, arm, spec.primary).values()))) for s, rows in rows_of.items()}
        collapsed = [s for s in rows_of if loops[s] >= rule.loops or drop[s] > rule.drop]
        out.append(CollapseRow(kind=kind, share=share, arm=arm, seeds=len(rows_of), collapsed=collapsed,
                               loops=list(loops.values()), drop=list(drop.values())))
    return out


def figure_png(summary: StudySummary) -> bytes:
    """A panel per dose kind: each arm minus the baseline on the primary endpoint against the dose,
    the mean over seeds with its interval."""
    from matplotlib.figure import Figure

    spec = summary.spec
    kinds = list(dict.fromkeys(d.kind for d in summary.differences)) or ["replace"]
    fig = Figure(figsize=(5.2 * len(kinds), 3.9), dpi=110)
    for i, kind in enumerate(kinds):
        ax = fig.add_subplot(1, len(kinds), i + 1)
        for arm in [a for a in spec.arms if a != spec.baseline]:
            points = [d for d in summary.differences if d.kind == kind and d.arm == arm and d.metric == spec.primary]
            if not points:
                continue
            xs = np.array([p.share for p in points])
            ys = np.array([p.mean for p in points])
            errors = np.array([[p.mean - p.low for p in points], [p.high - p.mean for p in points]])
            ax.errorbar(xs + 0.004 * list(spec.arms).index(arm), ys, yerr=errors, marker="o", capsize=3,
                        linewidth=1, label=arm)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set(xlabel=f"dose: share of training prompts given a '{kind}' candidate",
               ylabel=f"{spec.primary}: arm - {spec.baseline}", title=f"{kind}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def markdown(summary: StudySummary) -> str:
    """The report as markdown (its figure apart: `figure_markdown`)."""
    spec, p = summary.spec, summary.spec.primary
    out = [f"# Study `{spec.name}`", "",
           f"{len(spec.seeds)} seeds x {len(spec.doses)} doses x {len(spec.arms)} arms ({summary.runs} pipeline runs, "
           f"{summary.run_seconds / 3600:.2f} h of pipeline runs on this machine, a run resumed after a kill "
           "counting its last invocation); every arm against "
           f"`{spec.baseline}`, paired within a seed and dose. Intervals: bootstrap over seeds with prompts "
           f"resampled within each ({spec.statistics.resamples} resamples, {spec.statistics.confidence:.0%}); p: "
           f"Wilcoxon signed-rank across seeds (with {len(spec.seeds)} seeds the smallest two-sided p possible is "
           f"{2 / 2 ** len(spec.seeds):.3g}).", "",
           "## Measured dose", "",
           "| kind | dose | seeds | chosen rewrites losing content | chosen = injected |", "|---|---|---|---|---|"]
    for d in summary.dose:
        out.append(f"| {d.kind} | {d.share:g} | {d.seeds} | {d.chosen_loses_content:.3f} | {d.chosen_injected:.3f} |")
    metrics = [*spec.metrics, LOSES, LOOPS, DISTANCE]
    out += ["", "## Endpoints (mean over seeds of the mean over test prompts)", "",
            "| kind | dose | arm | " + " | ".join(metrics) + " |", "|---|---|---|" + "---|" * len(metrics)]
    for m in summary.means:
        cells = " | ".join(f"{m.endpoints[k]:.4f}" for k in metrics)
        out.append(f"| {m.kind} | {m.share:g} | {m.arm} | {cells} |")
    out += ["", f"## Arm - {spec.baseline} per dose", "",
            "| kind | dose | arm | endpoint | mean | interval | seeds higher | p |",
            "|---|---|---|---|---|---|---|---|"]
    for d in summary.differences:
        out.append(f"| {d.kind} | {d.share:g} | {d.arm} | {d.metric} | {d.mean:+.4f} | "
                   f"[{d.low:+.4f}, {d.high:+.4f}] | {d.higher} of {d.seeds} | {d.p_value:.3g} |")
    out += ["", f"## Slope over doses ({p}: arm - {spec.baseline}, per unit of dose)", "",
            "| kind | arm | slope | interval |", "|---|---|---|---|"]
    for s in summary.slopes:
        out.append(f"| {s.kind} | {s.arm} | {s.slope:+.4f} | [{s.low:+.4f}, {s.high:+.4f}] |")
    if spec.collapse is not None:
        rule = spec.collapse
        out += ["", "## Collapsed seeds", "",
                f"A seed collapsed when at least {rule.loops:.0%} of its test rewrites loop (a phrase of 1-3 words, "
                f"not all style words, three times back to back) or its {p} is more than {rule.drop:g} below "
                f"`{rule.reference}`'s.", "",
                "| kind | dose | arm | collapsed seeds | looping rewrites (max over seeds) | "
                f"{rule.reference} - arm (max over seeds) |", "|---|---|---|---|---|---|"]
        for c in summary.collapses:
            seeds = ", ".join(map(str, c.collapsed)) or "none"
            out.append(f"| {c.kind} | {c.share:g} | {c.arm} | {len(c.collapsed)} of {c.seeds}: {seeds} | "
                       f"{max(c.loops):.3f} | {max(c.drop):+.4f} |")
    return "\n".join(out) + "\n"


def figure_caption(spec: StudySpec) -> str:
    return f"{spec.primary}: each arm minus {spec.baseline} against the dose"


def figure_markdown(image: str) -> str:
    """The figure's section around `image`, the figure as markdown (a link or the PNG inline)."""
    return f"\n## Figure\n\n{image}\n"


def run_seconds(rows: pa.Table) -> float:
    """The pipeline runs' wall time, summed over runs (each run's rows carry its own)."""
    seconds = dict(zip(rows.column("run_index").to_pylist(), rows.column("run_seconds").to_pylist()))
    return float(sum(seconds.values()))


def report_files(rows: pa.Table, spec: StudySpec, runs: int) -> dict[str, bytes]:
    """report.md, report.json and figure.png."""
    summary = summarise(rows, spec, runs)
    return {"report.md": (markdown(summary) + figure_markdown(f"![{figure_caption(spec)}](figure.png)")).encode(),
            "report.json": summary.model_dump_json(indent=2).encode(),
            "figure.png": figure_png(summary)}
