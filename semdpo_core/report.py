"""The report stage: the paper's tables and figures, computed from the evaluate stage's rows.

- scores per dataset x method x metric, and the min-max normalised average (Tables 5-7);
- rewritten-prompt token lengths: N, mean, std, median, max, and medians per dataset (Tables 1-2);
- head to head: how often the focus method (Sem-DPO) wins, ties or loses per prompt (Figure 4);
- CLIP vs preference scatter per dataset (Figure 3), the alpha sweep (Figure 5);
- Proposition 2's drift: prompt-level, image-level and T2I error, and how often the bound held;
- drift in meaning (the weigh encoder's d(x, y) per rewrite), and paired tests over the test
  prompts: each method against SFT and the focus method against DPO (bootstrap interval, sign test);
- a grid of sample images: the original prompt's image next to each method's.
"""

from __future__ import annotations

import io
import json
import logging
import math
import statistics
from collections import defaultdict
from typing import Any

import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute)

from semdpo_core.config import ScorerConfig
from semdpo_core.context import Output, StageContext
from semdpo_core.methods import parse_run_label
from semdpo_core.schemas import EVALUATION, REPORT_SCORES, TRAIN_LOG
from semdpo_core.scorers.base import decode_png

log = logging.getLogger("semdpo.report")

AVG = "avg_score"


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


def token_stats(evaluation: pa.Table) -> list[dict[str, Any]]:
    """Per method: N, mean, std, median and max of the rewrite's token length, and the median per dataset."""
    by_method: dict[str, list[int]] = defaultdict(list)
    by_dataset: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for row in evaluation.select(["method", "dataset", "rewrite_tokens"]).to_pylist():
        by_method[row["method"]].append(row["rewrite_tokens"])
        by_dataset[row["method"]][row["dataset"]].append(row["rewrite_tokens"])
    out = []
    for method, lengths in by_method.items():
        mean, std = mean_std([float(n) for n in lengths])
        out.append(dict(method=method, n=len(lengths), mean=mean, std=std, median=float(statistics.median(lengths)),
                        max=max(lengths), median_by_dataset={d: float(statistics.median(v)) for d, v in by_dataset[method].items()}))
    return out


def focus_method(methods: list[str], focus: str | None) -> str | None:
    """The method compared head to head: `focus`, else sem_dpo, else the first Sem-DPO of a sweep."""
    if focus is not None:
        return focus if focus in methods else None
    if "sem_dpo" in methods:
        return "sem_dpo"
    return next((m for m in methods if m.startswith("sem_dpo@")), None)


def report_focus(methods: list[str], settings: Any, selection: dict[str, Any] | None) -> str | None:
    """The report's focus method: `report.focus`, else the alpha the sweep chose on validation."""
    return focus_method(methods, settings.focus if settings.focus or selection is None else selection["chosen"])


def head_to_head(evaluation: pa.Table, focus: str, tie_tolerance: float) -> list[dict[str, Any]]:
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
            out.append(dict(method=focus, versus=other, metric=metric, n=n, **counts,
                            **{f"{k}_rate": (v / n if n else math.nan) for k, v in counts.items()}))
    return out


def drift_stats(evaluation: pa.Table, epsilon: float | None) -> tuple[float | None, list[dict[str, Any]]]:
    """Proposition 2 per method: mean prompt drift d(x,y), image drift d_T2I-Drift, T2I error
    d_T2I(y), and the share of prompts where d_T2I-Drift <= d(x,y) + epsilon held. Epsilon
    defaults to the 95th percentile of the T2I error of the human prompts' images."""
    rows = [r for r in evaluation.select(["method", "prompt_drift", "image_drift", "t2i_error"]).to_pylist()
            if r["prompt_drift"] is not None]
    if not rows:
        return None, []
    if epsilon is None:
        human = sorted(r["t2i_error"] for r in rows if r["method"] == "human") or sorted(r["t2i_error"] for r in rows)
        epsilon = human[min(len(human) - 1, math.ceil(0.95 * len(human)) - 1)]
    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_method[r["method"]].append(r)
    out = []
    for method, rs in by_method.items():
        out.append(dict(
            method=method, n=len(rs),
            prompt_drift=statistics.fmean(r["prompt_drift"] for r in rs),
            image_drift=statistics.fmean(r["image_drift"] for r in rs),
            t2i_error=statistics.fmean(r["t2i_error"] for r in rs),
            bound_held=sum(r["image_drift"] <= r["prompt_drift"] + epsilon for r in rs) / len(rs),
        ))
    return epsilon, out


DISTANCE = "semantic_distance"  # evaluation column: 1 - cos(e(x), e(y)), the weigh encoder's drift in meaning


def meaning_drift(evaluation: pa.Table) -> list[dict[str, Any]]:
    """Per dataset and method: the mean and std of d(x, y) = 1 - cos(e(x), e(y)) between each test
    prompt and its rewrite, with the weigh stage's frozen text encoder (0 for the human prompt)."""
    lists: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in evaluation.select(["dataset", "method", DISTANCE]).to_pylist():
        if r[DISTANCE] is not None:
            lists[(r["dataset"], r["method"])].append(r[DISTANCE])
    return [dict(dataset=d, method=m, n=len(xs), mean=mean_std(xs)[0], std=mean_std(xs)[1]) for (d, m), xs in lists.items()]


def paired_values(evaluation: pa.Table) -> dict[tuple[str, str], dict[tuple[str, str], float]]:
    """{(method, metric): {(dataset, prompt_id): value}} for every score and the semantic distance."""
    out: dict[tuple[str, str], dict[tuple[str, str], float]] = defaultdict(dict)
    for r in evaluation.select(["method", "dataset", "prompt_id", "scores", DISTANCE]).to_pylist():
        key = (r["dataset"], r["prompt_id"])
        for metric, value in r["scores"]:
            out[(r["method"], metric)][key] = value
        if r[DISTANCE] is not None:
            out[(r["method"], DISTANCE)][key] = r[DISTANCE]
    return out


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided exact sign test: P(a split at least this uneven | each non-tied prompt a fair coin)."""
    n, k = wins + losses, min(wins, losses)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def bootstrap_interval(diffs: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean paired difference (seeded: the same every run)."""
    import random

    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def paired_tests(evaluation: pa.Table, comparisons: list[tuple[str, str]], tie_tolerance: float) -> list[dict[str, Any]]:
    """Per (method, baseline) and metric, over the test prompts both have: the mean paired
    difference (method - baseline), its 95% bootstrap interval, and the sign test's p-value."""
    values = paired_values(evaluation)
    metrics = ordered([metric for (_, metric) in values])
    out = []
    for method, baseline in comparisons:
        for metric in metrics:
            mine, theirs = values.get((method, metric), {}), values.get((baseline, metric), {})
            keys = [k for k in mine if k in theirs]
            if len(keys) < 2:
                continue
            diffs = [mine[k] - theirs[k] for k in keys]
            wins, losses = sum(d > tie_tolerance for d in diffs), sum(d < -tie_tolerance for d in diffs)
            low, high = bootstrap_interval(diffs)
            out.append(dict(method=method, baseline=baseline, metric=metric, n=len(diffs),
                            mean_diff=statistics.fmean(diffs), ci_low=low, ci_high=high,
                            wins=wins, losses=losses, sign_p=sign_test_p(wins, losses)))
    return out


def comparisons_of(methods: list[str], focus: str | None) -> list[tuple[str, str]]:
    """What the report tests: every trained method against SFT, and the focus method against DPO."""
    pairs = [(m, "sft") for m in methods if m not in ("human", "sft")] if "sft" in methods else []
    if focus and "dpo" in methods and focus != "dpo":
        pairs.append((focus, "dpo"))
    return pairs


def sweep_alpha(method: str) -> float | None:
    """The alpha of a sweep run's label (`sem_dpo@alpha=2` -> 2.0), else None."""
    return parse_run_label(method)[1]


def means_by(scores: pa.Table, dataset: str) -> dict[tuple[str, str], float]:
    return {(r["method"], r["metric"]): r["mean"] for r in scores.to_pylist() if r["dataset"] == dataset}


def scatter_png(scores: pa.Table, dataset: str, x: str, y: str, focus: str | None) -> bytes:
    """One point per method, `x` against `y` mean score (paper Figure 3: upper right is better)."""
    means = means_by(scores, dataset)
    methods = [m for m in ordered(scores.column("method").to_pylist()) if (m, x) in means and (m, y) in means]
    fig, ax = _axes()
    for method in methods:
        ax.scatter(means[(method, x)], means[(method, y)], s=60 if method == focus else 30,
                   marker="*" if method == focus else "o", zorder=3)
        ax.annotate(method, (means[(method, x)], means[(method, y)]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    return _png(fig, xlabel=x, ylabel=y, title=f"{dataset}: {x} vs {y}")


def sweep_png(scores: pa.Table, dataset: str, x: str, y: str) -> bytes:
    """Sem-DPO's alpha sweep: `x` against `y`, a point per alpha, joined in alpha order (Figure 5)."""
    means = means_by(scores, dataset)
    runs = sorted((sweep_alpha(m), m) for m in ordered(scores.column("method").to_pylist()) if sweep_alpha(m) is not None)
    runs = [(a, m) for a, m in runs if (m, x) in means and (m, y) in means]
    fig, ax = _axes()
    ax.plot([means[(m, x)] for _, m in runs], [means[(m, y)] for _, m in runs], marker="o")
    for alpha, method in runs:
        ax.annotate(f"α={alpha:g}", (means[(method, x)], means[(method, y)]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    return _png(fig, xlabel=x, ylabel=y, title=f"{dataset}: alpha sweep")


def _axes() -> tuple[Any, Any]:
    """A figure with one set of axes, the size every report plot has."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 3.6), dpi=120)
    return fig, fig.add_subplot()


def _png(fig: Any, **labels: str) -> bytes:
    """The figure as PNG bytes: its axes labelled, gridded and given four short-numbered ticks."""
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator

    for ax in fig.axes:
        ax.set(**labels)
        ax.grid(alpha=0.3)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(4))
            axis.set_major_formatter(FormatStrFormatter("%.4g"))
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


CURVES = ("loss", "reward_margin", "accuracy", "mean_weight", "effective_batch", "learning_rate")


def smoothed(values: list[float], window: int) -> list[float]:
    """A trailing moving average over `window` steps (per-step values of a batch of 8 are noisy)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def training_curves_png(logs: dict[str, pa.Table]) -> tuple[bytes, int]:
    """A panel per training metric, a line per run over its optimizer steps, each smoothed over
    1/50 of the longest run; returns the PNG and the window."""
    from matplotlib.figure import Figure

    window = max(1, max(log.num_rows for log in logs.values()) // 50)
    fig = Figure(figsize=(10.5, 5.6), dpi=110)
    for index, metric in enumerate(CURVES):
        ax = fig.add_subplot(2, 3, index + 1)
        for label, log_table in logs.items():
            ax.plot([s + 1 for s in log_table.column("step").to_pylist()],
                    smoothed(log_table.column(metric).to_pylist(), window), label=label, linewidth=1)
        ax.set_title(metric.replace("_", " "), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=6)
    fig.supxlabel("optimizer step", fontsize=8)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    return buffer.getvalue(), window


def sample_grid(evaluation: pa.Table, count: int, cell: int = 160) -> bytes | None:
    """PNG grid: a row per sample prompt (the first `count` of the first dataset), a column per
    method; the `human` column is the original prompt's image."""
    from PIL import Image, ImageDraw

    rows = evaluation.select(["method", "dataset", "prompt_id", "prompt", "image"]).to_pylist()
    if not rows or count == 0:
        return None
    methods = ordered([r["method"] for r in rows])
    first = rows[0]["dataset"]
    prompts = ordered([(r["prompt_id"], r["prompt"]) for r in rows if r["dataset"] == first])[:count]
    image = {(r["method"], r["prompt_id"]): r["image"] for r in rows if r["dataset"] == first}
    label_h, caption_w = 18, 220
    grid = Image.new("RGB", (caption_w + cell * len(methods), label_h + cell * len(prompts)), "white")
    draw = ImageDraw.Draw(grid)
    for j, method in enumerate(methods):
        draw.text((caption_w + j * cell + 4, 3), method if method != "human" else "human (original)", fill="black")
    for i, (pid, prompt) in enumerate(prompts):
        top = label_h + i * cell
        draw.multiline_text((4, top + 4), "\n".join(_wrap(prompt, 34)[:8]), fill="black")
        for j, method in enumerate(methods):
            if (method, pid) in image:
                tile = decode_png(image[(method, pid)]).resize((cell - 4, cell - 4), Image.NEAREST)
                grid.paste(tile, (caption_w + j * cell + 2, top + 2))
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    return buffer.getvalue()


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


def normalised_averages(evaluation: pa.Table, average_over: list[str] | None) -> dict[str, float]:
    """Each method's normalised average (Tables 5-7, over the methods in `evaluation`), averaged
    over its datasets."""
    rows = [r for r in score_table(evaluation, average_over).to_pylist() if r["metric"] == AVG]
    return {m: statistics.fmean(r["mean"] for r in rows if r["method"] == m) for m in ordered([r["method"] for r in rows])}


def alpha_selection(validation: pa.Table, evaluation: pa.Table, average_over: list[str] | None) -> dict[str, Any]:
    """`train.alpha: auto`: each sweep run's normalised average over the sweep runs, on the
    validation prompts (held out of training) and on the test prompts; the alpha chosen is the
    best on validation (the first on a tie), the one best on test is shown beside it."""
    runs = ordered(validation.column("method").to_pylist())
    on_validation = normalised_averages(validation, average_over)
    on_test = normalised_averages(evaluation.filter(pa.compute.is_in(evaluation.column("method"), pa.array(runs))),
                                  average_over)
    by_alpha = [{"method": m, "alpha": sweep_alpha(m), "validation": on_validation[m], "test": on_test.get(m)} for m in runs]
    chosen = max(by_alpha, key=lambda r: r["validation"])
    best = max(by_alpha, key=lambda r: -math.inf if r["test"] is None else r["test"])
    return {"by_alpha": by_alpha, "chosen": chosen["method"], "chosen_alpha": chosen["alpha"],
            "best_on_test": best["method"], "best_on_test_alpha": best["alpha"],
            "validation_prompts": len(set(validation.column("prompt_id").to_pylist()))}


def build_report(
    evaluation: pa.Table, settings: Any, scorers: dict[str, Any], encoder: str = "", validation: pa.Table | None = None,
) -> tuple[pa.Table, dict[str, Any], dict[str, bytes]]:
    """(REPORT_SCORES table, the other tables as a JSON-ready dict, {file name: PNG bytes}).

    `settings` is a ReportConfig; `scorers` maps each metric to its ScorerConfig (named in the
    report); `encoder` is the weigh stage's text encoder, which measured `semantic_distance`;
    `validation` holds the sweep runs' rows on the validation prompts when alpha is chosen."""
    methods = ordered(evaluation.column("method").to_pylist())
    datasets = ordered(evaluation.column("dataset").to_pylist())
    selection = alpha_selection(validation, evaluation, settings.average_over) if validation is not None else None
    focus = report_focus(methods, settings, selection)
    normalised = normalised_methods(methods, settings, focus)
    scores = score_table(evaluation, settings.average_over, normalised)
    metrics = ordered([r["metric"] for r in scores.to_pylist() if r["metric"] != AVG])
    epsilon, drift = drift_stats(evaluation, settings.drift_epsilon)
    tables = {
        "scorers": {name: s.model_dump(exclude_none=True) for name, s in scorers.items()},
        "datasets": datasets, "methods": methods, "focus": focus, "normalised_over": normalised,
        "tokens": token_stats(evaluation),
        "head_to_head": head_to_head(evaluation, focus, settings.tie_tolerance) if focus else [],
        "drift": {"epsilon": epsilon, "methods": drift},
        "encoder": encoder,
        "meaning_drift": meaning_drift(evaluation),
        "paired_tests": paired_tests(evaluation, comparisons_of(methods, focus), settings.tie_tolerance),
        "alpha_selection": selection,
    }
    x = settings.semantic_metric
    plots: dict[str, bytes] = {}
    captions: dict[str, str] = {}  # what each plot shows: its caption in report.md and the Prefect UI
    sweep = [m for m in methods if sweep_alpha(m) is not None]
    for dataset in datasets:
        for y in [m for m in settings.preference_metrics if m in metrics]:
            if x in metrics:
                name = f"scatter-{dataset}-{x}-vs-{y}.png"
                plots[name] = scatter_png(scores, dataset, x, y, focus)
                captions[name] = (f"{dataset}: mean {x} against mean {y} per method; upper right is better (paper "
                                  f"Figure 3)" + (f"; the star is {focus}" if focus else ""))
                if len(sweep) > 1:
                    name = f"alpha-sweep-{dataset}-{x}-vs-{y}.png"
                    plots[name] = sweep_png(scores, dataset, x, y)
                    captions[name] = f"{dataset}: Sem-DPO's alpha sweep, mean {x} against mean {y}, a point per alpha (paper Figure 5)"
    grid = sample_grid(evaluation, settings.sample_prompts)
    if grid is not None:
        plots["samples.png"] = grid
        captions["samples.png"] = ("sample images: a row per test prompt, a column per method; `human` is the "
                                   "original prompt's image, every other column that method's rewrite's image")
    tables["plots"] = captions
    return scores, tables, plots


def markdown(scores: pa.Table, tables: dict[str, Any], links: dict[str, str]) -> str:
    """The report as markdown: every table, then links to the plots."""
    rows = scores.to_pylist()
    out = ["# Sem-DPO evaluation report", "",
           "Every image is scored against the ORIGINAL prompt. Scorers: "
           + "; ".join(f"`{n}` = {s['kind']} {s['model']}" for n, s in tables["scorers"].items()) + ".", ""]
    out += ["## Scores per dataset (mean; avg_score = mean of min-max normalised metrics, paper Tables 5-7)", ""]
    out += scores_markdown(rows, tables["datasets"], tables["methods"], tables.get("normalised_over"))
    datasets = tables["datasets"]
    out += ["", "## Rewritten-prompt token length (paper Tables 1-2)", "",
            "| method | N | mean | std | median | max | " + " | ".join(f"median {d}" for d in datasets) + " |",
            "|---|---|---|---|---|---|" + "---|" * len(datasets)]
    for t in tables["tokens"]:
        medians = " | ".join(f"{t['median_by_dataset'].get(d, float('nan')):.1f}" for d in datasets)
        out.append(f"| {t['method']} | {t['n']} | {t['mean']:.2f} | {t['std']:.2f} | {t['median']:.1f} | {t['max']} | {medians} |")
    out += ["", f"## Head to head: {tables['focus'] or '(no Sem-DPO run evaluated)'} vs each method (paper Figure 4)", ""]
    if tables["head_to_head"]:
        out += ["| versus | metric | win | tie | loss | n |", "|---|---|---|---|---|---|"]
        for h in tables["head_to_head"]:
            out.append(f"| {h['versus']} | {h['metric']} | {h['win_rate']:.1%} | {h['tie_rate']:.1%} | {h['loss_rate']:.1%} | {h['n']} |")
    out += meaning_drift_markdown(tables)
    out += alpha_selection_markdown(tables.get("alpha_selection"))
    drift = tables["drift"]
    out += ["", "## Semantic drift (Proposition 2)", ""]
    if drift["methods"]:
        out += [f"Euclidean distances of normalised embeddings; bound: d_T2I-Drift(x,y) <= d(x,y) + eps, eps = {drift['epsilon']:.4f}.", "",
                "| method | n | d(x,y) | d_T2I-Drift | d_T2I(y) | bound held |", "|---|---|---|---|---|---|"]
        for d in drift["methods"]:
            out.append(f"| {d['method']} | {d['n']} | {d['prompt_drift']:.4f} | {d['image_drift']:.4f} | {d['t2i_error']:.4f} | {d['bound_held']:.1%} |")
    else:
        out.append("Drift was not measured (evaluate.drift_encoder is null).")
    out += ["", "## Plots", ""] + [f"- [{name}]({url}): {tables['plots'].get(name, '')}" for name, url in links.items()]
    return "\n".join(out) + "\n"


def scores_markdown(rows: list[dict[str, Any]], datasets: list[str], methods: list[str],
                    normalised_over: list[str] | None) -> list[str]:
    """The scores table (a row per dataset and method), with a line on which methods the
    normalised average is taken over; the others are marked as scored beside them."""
    metrics = ordered([r["metric"] for r in rows])
    beside = [] if normalised_over is None else [m for m in methods if m not in normalised_over]
    out = []
    if beside:
        out += [f"avg_score normalises each metric over {', '.join(normalised_over)} (`report.normalise_over`); "
                f"{', '.join(beside)} (marked *) are put on the same scale beside them, so they change no other row "
                "and may fall below 0 or above 1.", ""]
    out += ["| dataset | method | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    cell = {(r["dataset"], r["method"], r["metric"]): r["mean"] for r in rows}
    for dataset in datasets:
        for method in methods:
            values = [cell.get((dataset, method, m)) for m in metrics]
            shown = f"{method} *" if method in beside else method
            out.append(f"| {dataset} | {shown} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in values) + " |")
    return out


def alpha_selection_markdown(selection: dict[str, Any] | None) -> list[str]:
    """The alpha chosen on the validation prompts, beside the one that was best on the test prompts."""
    if selection is None:
        return []
    out = ["", "## Alpha chosen on the validation prompts (train.alpha: auto)", "",
           f"Each alpha's normalised average (Tables 5-7, over the sweep's runs) on {selection['validation_prompts']} "
           "training prompts held out of training, and on the test prompts. The chosen run is the one compared "
           "head to head above.", "", "| alpha | validation | test |", "|---|---|---|"]
    for r in selection["by_alpha"]:
        mark = " (chosen)" if r["method"] == selection["chosen"] else ""
        test = "-" if r["test"] is None else f"{r['test']:.4f}"
        out.append(f"| {r['alpha']:g}{mark} | {r['validation']:.4f} | {test} |")
    agree = "the same alpha" if selection["chosen"] == selection["best_on_test"] else f"alpha {selection['best_on_test_alpha']:g}"
    out += ["", f"Chosen: alpha {selection['chosen_alpha']:g}; best on the test prompts: {agree}."]
    return out


DISTANCE_NOTE = (
    "d(x, y) = 1 - cos(e(x), e(y)) between the test prompt and the rewrite, with the weigh stage's frozen "
    "text encoder ({encoder}): the drift in meaning that Sem-DPO's weight penalises in training."
)
MINILM_NOTE = (
    " Measured with all-MiniLM-L6-v2: appending style words gives d of about 0.07-0.26 and replacing the "
    "content 0.40-0.69, but appending a contradicting scene (\"..., in a lush green forest\" after \"a white "
    "house in a desert\") only 0.06-0.23: the weight separates replacement from addition and cannot see a "
    "contradiction that is only appended. That is a property of Sem-DPO's encoder-based weight, not of the data."
)


def meaning_drift_markdown(tables: dict[str, Any]) -> list[str]:
    """The drift-in-meaning table and the paired tests, as markdown lines."""
    out = ["", "## Drift in meaning: d(x, y) of each rewrite from its prompt", ""]
    if tables["meaning_drift"]:
        encoder = tables.get("encoder") or "unnamed"
        note = DISTANCE_NOTE.format(encoder=encoder) + (MINILM_NOTE if "minilm" in encoder.lower() else "")
        out += [note, "", "| dataset | method | n | mean d(x, y) | std |", "|---|---|---|---|---|"]
        for d in tables["meaning_drift"]:
            out.append(f"| {d['dataset']} | {d['method']} | {d['n']} | {d['mean']:.4f} | {d['std']:.4f} |")
    else:
        out.append("Not measured in this evaluation.")
    out += ["", "## Paired tests over the test prompts (method - baseline)", "",
            "Mean paired difference, its 95% bootstrap interval (2000 resamples), and the two-sided sign test "
            f"over prompts that differ. For `{DISTANCE}` lower is closer to the prompt.", "",
            "| method | baseline | metric | n | mean diff | 95% interval | higher / lower | sign test p |",
            "|---|---|---|---|---|---|---|---|"]
    for t in tables["paired_tests"]:
        out.append(f"| {t['method']} | {t['baseline']} | {t['metric']} | {t['n']} | {t['mean_diff']:+.4f} | "
                   f"[{t['ci_low']:+.4f}, {t['ci_high']:+.4f}] | {t['wins']} / {t['losses']} | {t['sign_p']:.3g} |")
    return out


def report_stage(ctx: StageContext) -> Output:
    """REPORT_SCORES, with report.md, report.json and the PNG plots as the dataset's files."""
    s = ctx.settings
    rows = ctx.store.read_table(ctx.inputs["evaluate"], EVALUATION)
    scorers = {name: ScorerConfig.model_validate(dict(scorer)) for name, scorer in s.scorers.items()}
    validation = ctx.store.read_table(ctx.inputs["validate"], EVALUATION) if "validate" in ctx.inputs else None
    scores, tables, plots = build_report(rows, s.report, scorers, s.semantic_encoder, validation)
    logs = {role.removeprefix("train:"): ctx.store.read_table(ref, TRAIN_LOG)
            for role, ref in ctx.inputs.items() if role.startswith("train:")}
    if logs:
        plots["training-curves.png"], window = training_curves_png(logs)
        tables["plots"]["training-curves.png"] = (
            "training curves: loss, reward margin (beta x log-ratio margin), reward accuracy, mean semantic weight, "
            f"effective batch (sum of the step's pair weights) and learning rate per optimizer step, a line per run, "
            f"each a moving average over {window} steps")
    links = {name: f"plots/{name}" for name in plots}  # beside report.md in the dataset's files
    files = {f"plots/{name}": data for name, data in plots.items()}
    files["report.md"] = markdown(scores, tables, links).encode()
    files["report.json"] = json.dumps(tables, indent=2, sort_keys=True).encode()
    log.info("report: %d score rows, %d plots, %d head-to-head rows", scores.num_rows, len(plots), len(tables["head_to_head"]))
    return Output(scores, files=files, meta={"plots": sorted(plots)})
