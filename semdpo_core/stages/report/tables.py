"""The report's tables, computed from the evaluate stage's rows: scores per dataset x method x
metric with the min-max normalised average (paper Tables 5-7), rewrite lengths (Tables 1-2), head
to head (Figure 4), Proposition 2's drift, drift in meaning, and the alpha chosen on validation."""

from __future__ import annotations

import logging
import math
import statistics
from collections import defaultdict
from typing import Any

import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute)

from semdpo_core.pipeline.schemas import REPORT_SCORES
from semdpo_core.preference.methods import parse_run_label
from semdpo_core.stages.report.document import (
    AlphaScore,
    AlphaSelection,
    Drift,
    DriftRow,
    HeadToHead,
    MeaningDrift,
    TokenStats,
)

log = logging.getLogger("semdpo.report")


AVG = "avg_score"


DISTANCE = "semantic_distance"  # evaluation column: 1 - cos(e(x), e(y)), the weigh encoder's drift in meaning


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def ordered(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def score_lists(evaluation: pa.Table) -> dict[tuple[str, str, str], list[float]]:
    """{(dataset, method, metric): scores}, in the table's order."""
    out: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for row in evaluation.select(["dataset", "method", "scores"]).to_pylist():
        for metric, value in row["scores"]:
            out[(row["dataset"], row["method"], metric)].append(value)
    return out


def score_table(evaluation: pa.Table, average_over: list[str] | None = None,
                normalise_over: list[str] | None = None) -> pa.Table:
    """REPORT_SCORES: mean/std per dataset x method x metric, each mean min-max normalised over the
    dataset's methods in `normalise_over` (default all), and `avg_score` = the mean of the
    normalised means of `average_over` (default every metric), as in the paper's Tables 5-7.
    A method outside `normalise_over` is put on the same scale beside them (it may fall below 0 or
    above 1) and changes no other method's score, except where the set's methods tie on a metric
    (see `normalising_range`)."""
    lists = score_lists(evaluation)
    datasets = ordered([k[0] for k in lists])
    methods = ordered([k[1] for k in lists])
    metrics = ordered([k[2] for k in lists])
    averaged = [m for m in (average_over or metrics) if m in metrics]
    rows: list[dict[str, Any]] = []
    for dataset in datasets:
        means = {(method, metric): statistics.fmean(lists[(dataset, method, metric)])
                 for method in methods for metric in metrics if (dataset, method, metric) in lists}
        normalized = {}
        for metric in metrics:
            scored = {method: v for (method, m), v in means.items() if m == metric}
            low, high = normalising_range(scored, normalise_over, f"{dataset}/{metric}")
            for method, value in scored.items():
                normalized[(method, metric)] = 1.0 if high == low else (value - low) / (high - low)
        for method in methods:
            for metric in metrics:
                if (method, metric) in means:
                    xs = lists[(dataset, method, metric)]
                    mean, std = mean_std(xs)
                    rows.append(dict(dataset=dataset, method=method, metric=metric, n=len(xs), mean=mean, std=std,
                                     normalized=normalized[(method, metric)]))
            parts = [normalized[(method, m)] for m in averaged if (method, m) in normalized]
            if parts:
                n = len(lists[(dataset, method, averaged[0])])
                rows.append(dict(dataset=dataset, method=method, metric=AVG, n=n, mean=statistics.fmean(parts),
                                 std=0.0, normalized=None))
    return pa.Table.from_pylist(rows, schema=REPORT_SCORES)


def normalising_range(means: dict[str, float], normalise_over: list[str] | None, where: str) -> tuple[float, float]:
    """The (low, high) a metric is min-max normalised by: over the `normalise_over` methods, or over
    every method where fewer than two of them were evaluated or they all score the same (a
    collapsed range would give every method 1.0); high == low only when every method ties."""
    core = [v for m, v in means.items() if normalise_over is None or m in normalise_over]
    if len(core) < 2 or min(core) == max(core):
        if len(means) > len(core):
            log.warning("%s: %s; normalised over every method instead", where,
                        "fewer than two methods of report.normalise_over scored" if len(core) < 2
                        else "report.normalise_over's methods all score the same")
        core = list(means.values())
    return min(core), max(core)


def normalised_methods(methods: list[str], settings: Any, focus: str | None) -> list[str] | None:
    """The methods inside the normalised average: `report.normalise_over` (the paper's set by
    default) and the focus method (a sweep's chosen alpha); None: every method."""
    if settings.normalise_over is None:
        return None
    inside = [m for m in methods if m in settings.normalise_over or m == focus]
    if len(inside) < 2:
        log.warning("report.normalise_over: %s of its methods evaluated (of %s); the normalised average is "
                    "taken over every method instead", len(inside), ", ".join(methods))
        return None
    return inside


def token_stats(evaluation: pa.Table) -> list[TokenStats]:
    """Per method: N, mean, std, median and max of the rewrite's token length, and the median per dataset."""
    by_method: dict[str, list[int]] = defaultdict(list)
    by_dataset: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for row in evaluation.select(["method", "dataset", "rewrite_tokens"]).to_pylist():
        by_method[row["method"]].append(row["rewrite_tokens"])
        by_dataset[row["method"]][row["dataset"]].append(row["rewrite_tokens"])
    out = []
    for method, lengths in by_method.items():
        mean, std = mean_std([float(n) for n in lengths])
        medians = {d: float(statistics.median(v)) for d, v in by_dataset[method].items()}
        out.append(TokenStats(method=method, n=len(lengths), mean=mean, std=std,
                              median=float(statistics.median(lengths)), max=max(lengths), median_by_dataset=medians))
    return out


def focus_method(methods: list[str], focus: str | None) -> str | None:
    """The method compared head to head: `focus`, else sem_dpo, else the first Sem-DPO of a sweep."""
    if focus is not None:
        return focus if focus in methods else None
    if "sem_dpo" in methods:
        return "sem_dpo"
    return next((m for m in methods if m.startswith("sem_dpo@")), None)


def report_focus(methods: list[str], settings: Any, selection: AlphaSelection | None) -> str | None:
    """The report's focus method: `report.focus`, else the alpha the sweep chose on validation."""
    return focus_method(methods, settings.focus if settings.focus or selection is None else selection.chosen)


def head_to_head(evaluation: pa.Table, focus: str, tie_tolerance: float) -> list[HeadToHead]:
    """Per other method and metric: the prompts where `focus` scores higher (win), within
    `tie_tolerance` (tie) or lower (loss), pooled over datasets (paper Figure 4)."""
    score: dict[tuple[str, str, str], dict[str, float]] = {}
    for row in evaluation.select(["method", "dataset", "prompt_id", "scores"]).to_pylist():
        score[(row["method"], row["dataset"], row["prompt_id"])] = dict(row["scores"])
    methods = ordered(evaluation.column("method").to_pylist())
    prompts = ordered([(d, p) for m, d, p in score if m == focus])
    metrics = ordered([k for (m, _, _), s in score.items() if m == focus for k in s])
    out = []
    for other in methods:
        if other == focus:
            continue
        for metric in metrics:
            counts = {"win": 0, "tie": 0, "loss": 0}
            for dataset, pid in prompts:
                theirs = score.get((other, dataset, pid), {}).get(metric)
                if theirs is None:
                    continue
                diff = score[(focus, dataset, pid)][metric] - theirs
                counts["tie" if abs(diff) <= tie_tolerance else "win" if diff > 0 else "loss"] += 1
            n = sum(counts.values())
            out.append(HeadToHead(method=focus, versus=other, metric=metric, n=n, **counts,
                                  **{f"{k}_rate": (v / n if n else math.nan) for k, v in counts.items()}))
    return out


def drift_stats(evaluation: pa.Table, epsilon: float | None) -> Drift:
    """Proposition 2 per method: mean prompt drift d(x,y), image drift d_T2I-Drift, T2I error
    d_T2I(y), and the share of prompts where d_T2I-Drift <= d(x,y) + epsilon held. Epsilon
    defaults to the 95th percentile of the T2I error of the human prompts' images."""
    rows = [r for r in evaluation.select(["method", "prompt_drift", "image_drift", "t2i_error"]).to_pylist()
            if r["prompt_drift"] is not None]
    if not rows:
        return Drift(epsilon=None, methods=[])
    if epsilon is None:
        human = sorted(r["t2i_error"] for r in rows if r["method"] == "human") or sorted(r["t2i_error"] for r in rows)
        epsilon = human[min(len(human) - 1, math.ceil(0.95 * len(human)) - 1)]
    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_method[r["method"]].append(r)
    out = []
    for method, rs in by_method.items():
        out.append(DriftRow(
            method=method, n=len(rs),
            prompt_drift=statistics.fmean(r["prompt_drift"] for r in rs),
            image_drift=statistics.fmean(r["image_drift"] for r in rs),
            t2i_error=statistics.fmean(r["t2i_error"] for r in rs),
            bound_held=sum(r["image_drift"] <= r["prompt_drift"] + epsilon for r in rs) / len(rs),
        ))
    return Drift(epsilon=epsilon, methods=out)


def meaning_drift(evaluation: pa.Table) -> list[MeaningDrift]:
    """Per dataset and method: the mean and std of d(x, y) = 1 - cos(e(x), e(y)) between each test
    prompt and its rewrite, with the weigh stage's frozen text encoder (0 for the human prompt)."""
    lists: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in evaluation.select(["dataset", "method", DISTANCE]).to_pylist():
        if r[DISTANCE] is not None:
            lists[(r["dataset"], r["method"])].append(r[DISTANCE])
    return [MeaningDrift(dataset=d, method=m, n=len(xs), mean=mean_std(xs)[0], std=mean_std(xs)[1])
            for (d, m), xs in lists.items()]


def sweep_alpha(method: str) -> float | None:
    """The alpha of a sweep run's label (`sem_dpo@alpha=2` -> 2.0), else None."""
    return parse_run_label(method)[1]


def normalised_averages(evaluation: pa.Table, average_over: list[str] | None) -> dict[str, float]:
    """Each method's normalised average (Tables 5-7, over the methods in `evaluation`), averaged
    over its datasets."""
    rows = [r for r in score_table(evaluation, average_over).to_pylist() if r["metric"] == AVG]
    return {m: statistics.fmean(r["mean"] for r in rows if r["method"] == m)
            for m in ordered([r["method"] for r in rows])}


def alpha_selection(validation: pa.Table, evaluation: pa.Table, average_over: list[str] | None) -> AlphaSelection:
    """`train.alpha: auto`: each sweep run's normalised average over the sweep runs, on the
    validation prompts (held out of training) and on the test prompts; the alpha chosen is the
    best on validation (the first on a tie), the one best on test is shown beside it."""
    runs = ordered(validation.column("method").to_pylist())
    on_validation = normalised_averages(validation, average_over)
    on_test = normalised_averages(evaluation.filter(pa.compute.is_in(evaluation.column("method"), pa.array(runs))),
                                  average_over)
    by_alpha = [AlphaScore(method=m, alpha=sweep_alpha(m), validation=on_validation[m], test=on_test.get(m))
                for m in runs]
    chosen = max(by_alpha, key=lambda r: r.validation)
    best = max(by_alpha, key=lambda r: -math.inf if r.test is None else r.test)
    return AlphaSelection(by_alpha=by_alpha, chosen=chosen.method, chosen_alpha=chosen.alpha,
                          best_on_test=best.method, best_on_test_alpha=best.alpha,
                          validation_prompts=len(set(validation.column("prompt_id").to_pylist())))
