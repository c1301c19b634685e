"""The report as markdown (report.md): its tables (`tables_markdown`, which the Prefect UI's
`semdpo-report` artifact shows too), then links to its plots."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from semdpo_core.stages.report.document import AlphaSelection, Drift, Report
from semdpo_core.stages.report.tables import DISTANCE, ordered

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


def markdown(scores: pa.Table, report: Report, links: dict[str, str]) -> str:
    """The report as markdown: every table, then links to the plots."""
    return tables_markdown(scores, report) + plots_markdown(report, links)


def tables_markdown(scores: pa.Table, report: Report) -> str:
    """Every table of the report, as markdown, from its title to the drift table."""
    out = ["# Sem-DPO evaluation report", "",
           "Every image is scored against the ORIGINAL prompt. Scorers: "
           + "; ".join(f"`{n}` = {s.kind} {s.model}" for n, s in report.scorers.items()) + ".", ""]
    out += ["## Scores per dataset (mean; avg_score = mean of min-max normalised metrics, paper Tables 5-7)", ""]
    out += scores_markdown(scores.to_pylist(), report.datasets, report.methods, report.normalised_over)
    out += tokens_markdown(report)
    out += head_to_head_markdown(report)
    out += meaning_drift_markdown(report)
    out += alpha_selection_markdown(report.alpha_selection)
    out += drift_markdown(report.drift)
    return "\n".join(out) + "\n"


def plots_markdown(report: Report, links: dict[str, str]) -> str:
    """The plots section: each plot's link and caption."""
    out = ["", "## Plots", ""] + [f"- [{name}]({url}): {report.plots.get(name, '')}" for name, url in links.items()]
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
            out.append(f"| {dataset} | {shown} | "
                       + " | ".join("-" if v is None else f"{v:.4f}" for v in values) + " |")
    return out


def tokens_markdown(report: Report) -> list[str]:
    """Rewritten-prompt token lengths per method, with the median per dataset."""
    datasets = report.datasets
    out = ["", "## Rewritten-prompt token length (paper Tables 1-2)", "",
           "| method | N | mean | std | median | max | " + " | ".join(f"median {d}" for d in datasets) + " |",
           "|---|---|---|---|---|---|" + "---|" * len(datasets)]
    for t in report.tokens:
        medians = " | ".join(f"{t.median_by_dataset.get(d, float('nan')):.1f}" for d in datasets)
        out.append(f"| {t.method} | {t.n} | {t.mean:.2f} | {t.std:.2f} | {t.median:.1f} | {t.max} | {medians} |")
    return out


def head_to_head_markdown(report: Report) -> list[str]:
    """The focus method's wins, ties and losses against each method."""
    out = ["", f"## Head to head: {report.focus or '(no Sem-DPO run evaluated)'} vs each method (paper Figure 4)", ""]
    if report.head_to_head:
        out += ["| versus | metric | win | tie | loss | n |", "|---|---|---|---|---|---|"]
        for h in report.head_to_head:
            out.append(f"| {h.versus} | {h.metric} | {h.win_rate:.1%} | {h.tie_rate:.1%} | {h.loss_rate:.1%} | {h.n} |")
    return out


def meaning_drift_markdown(report: Report) -> list[str]:
    """The drift-in-meaning table and the paired tests, as markdown lines."""
    out = ["", "## Drift in meaning: d(x, y) of each rewrite from its prompt", ""]
    if report.meaning_drift:
        encoder = report.encoder or "unnamed"
        note = DISTANCE_NOTE.format(encoder=encoder) + (MINILM_NOTE if "minilm" in encoder.lower() else "")
        out += [note, "", "| dataset | method | n | mean d(x, y) | std |", "|---|---|---|---|---|"]
        for d in report.meaning_drift:
            out.append(f"| {d.dataset} | {d.method} | {d.n} | {d.mean:.4f} | {d.std:.4f} |")
    else:
        out.append("Not measured in this evaluation.")
    out += ["", "## Paired tests over the test prompts (method - baseline)", "",
            "Mean paired difference, its 95% bootstrap interval (2000 resamples), and the two-sided sign test "
            f"over prompts that differ. For `{DISTANCE}` lower is closer to the prompt.", "",
            "| method | baseline | metric | n | mean diff | 95% interval | higher / lower | sign test p |",
            "|---|---|---|---|---|---|---|---|"]
    for t in report.paired_tests:
        out.append(f"| {t.method} | {t.baseline} | {t.metric} | {t.n} | {t.mean_diff:+.4f} | "
                   f"[{t.ci_low:+.4f}, {t.ci_high:+.4f}] | {t.wins} / {t.losses} | {t.sign_p:.3g} |")
    return out


def alpha_selection_markdown(selection: AlphaSelection | None) -> list[str]:
    """The alpha chosen on the validation prompts, beside the one that was best on the test prompts."""
    if selection is None:
        return []
    out = ["", "## Alpha chosen on the validation prompts (train.alpha: auto)", "",
           f"Each alpha's normalised average (Tables 5-7, over the sweep's runs) on {selection.validation_prompts} "
           "training prompts held out of training, and on the test prompts. The chosen run is the one compared "
           "head to head above.", "", "| alpha | validation | test |", "|---|---|---|"]
    for r in selection.by_alpha:
        mark = " (chosen)" if r.method == selection.chosen else ""
        test = "-" if r.test is None else f"{r.test:.4f}"
        out.append(f"| {r.alpha:g}{mark} | {r.validation:.4f} | {test} |")
    agree = ("the same alpha" if selection.chosen == selection.best_on_test
             else f"alpha {selection.best_on_test_alpha:g}")
    out += ["", f"Chosen: alpha {selection.chosen_alpha:g}; best on the test prompts: {agree}."]
    return out


def drift_markdown(drift: Drift) -> list[str]:
    """Proposition 2's table: prompt drift, image drift, T2I error, and how often the bound held."""
    out = ["", "## Semantic drift (Proposition 2)", ""]
    if not drift.methods:
        return out + ["Drift was not measured (evaluate.drift_encoder is null)."]
    out += [f"Euclidean distances of normalised embeddings; bound: d_T2I-Drift(x,y) <= d(x,y) + eps, "
            f"eps = {drift.epsilon:.4f}.", "",
            "| method | n | d(x,y) | d_T2I-Drift | d_T2I(y) | bound held |", "|---|---|---|---|---|---|"]
    for d in drift.methods:
        out.append(f"| {d.method} | {d.n} | {d.prompt_drift:.4f} | {d.image_drift:.4f} | {d.t2i_error:.4f} | "
                   f"{d.bound_held:.1%} |")
    return out
