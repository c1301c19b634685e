"""The human study's report: the paper's Table 4 (preference counts), the overall share with its
interval and test, per-participant and per-prompt tables with their tests, as markdown, CSV and a
plot of the per-participant and per-prompt rates."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from semdpo_core.human_eval.design import HumanStudy, load_study
from semdpo_core.human_eval.statistics import Comparison, HumanSummary, SignedRank, Unit, summarise
from semdpo_core.human_eval.votes import Vote, all_votes, connect, database_url

RATES_CAPTION = "each participant's and each prompt's share preferring the first method"


def p_text(p: float | None) -> str:
    return "-" if p is None else f"{p:.3g}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def rank_line(test: SignedRank, first: str, second: str, what: str) -> str:
    """The majorities over participants or prompts, and the signed-rank test of their rates."""
    return (f"{first} had the majority of the votes of {test.majority_first} of {plural(test.units, what)}, "
            f"{second} of {test.majority_second} (median rate for {first} {test.median_rate:.0%}); Wilcoxon "
            f"signed-rank test of the rates against 50%: p = {p_text(test.p_value)}")


def comparison_markdown(c: Comparison, confidence: float) -> list[str]:
    o = c.overall
    out = [f"## {c.first} vs {c.second}", "",
           "| method | preferred |", "|---|---|", f"| {c.second} | {c.counts[c.second]} |",
           f"| {c.first} | {c.counts[c.first]} |", "",
           f"{c.first} preferred in {o.first} of {o.n} comparisons ({o.rate:.1%}; {confidence:.0%} Clopper-Pearson "
           f"interval [{o.low:.1%}, {o.high:.1%}]; two-sided binomial test against 50%: p = {o.p_value:.3g}).", "",
           f"- Per participant: {rank_line(c.per_participant, c.first, c.second, 'participant')}.",
           f"- Per prompt: {rank_line(c.per_prompt, c.first, c.second, 'prompt')}.", "",
           "### Per participant", "", f"| participant | {c.first} | of | rate | binomial p |", "|---|---|---|---|---|"]
    out += [f"| {u.key} | {u.share.first} | {u.share.n} | {u.share.rate:.0%} | {u.share.p_value:.3g} |"
            for u in c.participants]
    out += ["", "### Per prompt", "", f"| prompt | {c.first} | of | rate | majority |", "|---|---|---|---|---|"]
    out += [f"| {u.prompt} | {u.share.first} | {u.share.n} | {u.share.rate:.0%} | {majority(u, c)} |"
            for u in c.prompts]
    return out + [""]


def majority(unit: Unit, c: Comparison) -> str:
    if unit.share.rate > 0.5:
        return c.first
    return c.second if unit.share.rate < 0.5 else "tie"


def markdown(summary: HumanSummary) -> str:
    out = [f"# Human study `{summary.study}`", "", f"Question asked: \"{summary.question}\"", "",
           f"{plural(summary.votes, 'vote')} from {plural(summary.participants_voted, 'participant')}.", ""]
    for c in summary.comparisons:
        out += comparison_markdown(c, summary.confidence)
    return "\n".join(out)


def csv_text(rows: list[dict[str, object]]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def votes_csv(study: HumanStudy, votes: list[Vote]) -> str:
    """Every vote with what it was a vote for: the raw data behind every table."""
    items = {i.id: i for i in study.items}
    return csv_text([{"participant": v.participant, "item": v.item, "dataset": items[v.item].dataset,
                      "prompt_id": items[v.item].prompt_id, "a": items[v.item].a.method, "b": items[v.item].b.method,
                      "side": v.side, "preferred": (items[v.item].a if v.chosen == "a" else items[v.item].b).method}
                     for v in votes])


def units_csv(summary: HumanSummary, which: str) -> str:
    rows = []
    for c in summary.comparisons:
        for u in getattr(c, which):
            rows.append({"first": c.first, "second": c.second, "unit": u.key, "prompt": u.prompt,
                         "first_preferred": u.share.first, "votes": u.share.n, "rate": u.share.rate,
                         "low": u.share.low, "high": u.share.high, "binomial_p": u.share.p_value})
    return csv_text(rows)


def rates_png(summary: HumanSummary) -> bytes:
    """Per comparison: each participant's and each prompt's rate of preferring the first method."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.2 * max(1, len(summary.comparisons))), dpi=100)
    for row, c in enumerate(summary.comparisons):
        for col, (units, what) in enumerate(((c.participants, "participant"), (c.prompts, "prompt"))):
            ax = fig.add_subplot(len(summary.comparisons), 2, 2 * row + col + 1)
            ax.bar(range(len(units)), [u.share.rate for u in units], color="tab:blue")
            ax.axhline(0.5, color="black", linewidth=0.8)
            ax.set(ylim=(0, 1), xlabel=what, ylabel=f"share preferring {c.first}", title=f"{c.first} vs {c.second}")
            ax.set_xticks(range(len(units)), [u.key if what == "participant" else str(i + 1)
                                              for i, u in enumerate(units)], fontsize=7)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def report_files(study: HumanStudy, votes: list[Vote], summary: HumanSummary) -> dict[str, bytes]:
    """report.md, report.json, votes.csv, participants.csv, prompts.csv, rates.png."""
    return {"report.md": (markdown(summary) + f"\n![{RATES_CAPTION}](rates.png)\n").encode(),
            "report.json": summary.model_dump_json(indent=2).encode(),
            "votes.csv": votes_csv(study, votes).encode(),
            "participants.csv": units_csv(summary, "participants").encode(),
            "prompts.csv": units_csv(summary, "prompts").encode(),
            "rates.png": rates_png(summary)}


def write_report(folder: Path, url: str | None = None, out: Path | None = None) -> tuple[HumanSummary, Path]:
    """Read the votes, write every report file to `out` (default FOLDER/report); (summary, out)."""
    study = load_study(folder)
    votes = all_votes(connect(database_url(folder, url)))
    summary = summarise(study, votes)
    out = out or folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    for name, data in report_files(study, votes, summary).items():
        (out / name).write_bytes(data)
    return summary, out
