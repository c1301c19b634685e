"""What one run of a study measured, read from the store: each arm's test prompts with their
endpoints, and the dose the labeller let through (the share of chosen rewrites that lose a content
word of their prompt).

Endpoints per test prompt, every image scored against the ORIGINAL prompt: alignment (primary),
the preference scores, whether the rewrite loses or replaces a content word of the prompt (the
world knows its content words), whether it falls into a loop (a phrase naming more than style
repeated back to back: a collapsed rewriter), and the MiniLM distance (a secondary figure: it grows with
appended style words alone).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from semdpo_core.pipeline.plan import Plan
from semdpo_core.pipeline.schemas import EVALUATION, PAIRS
from semdpo_core.stages.report.document import Report
from semdpo_core.store.artifact_store import ArtifactStore
from semdpo_core.study.spec import StudyRun
from semdpo_core.world.drift import INJECTED_SUFFIX
from semdpo_core.world.grammar import STYLES, content_words

STUDY_ROWS = pa.schema(
    [
        ("run_index", pa.int64()),  # the run's place in the grid (arms trained together share it)
        ("seed", pa.int64()),
        ("kind", pa.string()),  # the dose's kind: replace or append
        ("share", pa.float64()),  # the dose: share of training prompts given a content-changing candidate
        ("arm", pa.string()),
        ("run", pa.string()),  # the evaluated run's label (the arm's method; a sweep's chosen alpha)
        ("dataset", pa.string()),
        ("prompt_id", pa.string()),
        ("scores", pa.map_(pa.string(), pa.float64())),  # metric -> the image against the original prompt
        ("loses_content", pa.bool_()),  # the rewrite drops or replaces a content word of the prompt
        ("loops", pa.bool_()),  # the rewrite repeats a non-style phrase back to back (a collapsed rewriter)
        ("semantic_distance", pa.float64()),
        ("chosen_loses_content", pa.float64()),  # the measured dose: share of chosen rewrites losing content
        ("chosen_injected", pa.float64()),  # share of chosen rewrites that are the injected candidate
        ("run_seconds", pa.float64()),  # the pipeline run's wall time (what every stage it did not reuse cost)
    ]
)


def loses_content(prompt: str, rewrite: str) -> bool:
    """Whether the rewrite no longer names every content word of the prompt (object, count,
    colour, size, setting)."""
    return not content_words(prompt) <= content_words(rewrite)


ROWS_VERSION = 2  # in the study's fingerprint: 2 counts only loops that name more than style
LOOP_REPEATS = 3  # a phrase said this many times back to back is a loop
LOOP_PHRASE = 3  # of at most this many words ("at sea at sea at sea", "at night sky at night sky at night sky")
STYLE_WORDS = frozenset(word for style in STYLES for word in style.name.split())


def loops(rewrite: str) -> bool:
    """Whether the rewrite repeats a phrase of 1-3 words, not all style words, three times back to
    back: the loops a preference-trained rewriter collapses into. A repeated style phrase ("soft
    focus, soft focus, soft focus") is not one: the world's greedy SFT rewriters end most rewrites
    that way (86% of them over 8 seeds)."""
    words = rewrite.lower().replace(",", " ").split()
    for n in range(1, LOOP_PHRASE + 1):
        for i in range(len(words) - LOOP_REPEATS * n + 1):
            phrase = words[i:i + n]
            if not set(phrase) <= STYLE_WORDS and all(words[i + k * n:i + (k + 1) * n] == phrase
                                                      for k in range(1, LOOP_REPEATS)):
                return True
    return False


def measured_dose(pairs: pa.Table) -> tuple[float, float]:
    """(share of chosen rewrites that lose a content word of their prompt, share that were injected)."""
    rows = pairs.select(["prompt", "chosen", "chosen_id"]).to_pylist()
    if not rows:
        return 0.0, 0.0
    losing = sum(loses_content(r["prompt"], r["chosen"]) for r in rows)
    injected = sum(r["chosen_id"].endswith(INJECTED_SUFFIX) for r in rows)
    return losing / len(rows), injected / len(rows)


def evaluated_label(method: str, labels: list[str], report: Report | None) -> str:
    """The evaluation's label of an arm: its method's run, or the alpha a sweep chose on validation."""
    if method in labels:
        return method
    selection = report.alpha_selection if report is not None else None
    if selection is not None and selection.chosen.startswith(f"{method}@"):
        return selection.chosen
    raise KeyError(f"no evaluated run of {method!r} (evaluated: {', '.join(labels)})")


def run_rows(store: ArtifactStore, plan: Plan, run: StudyRun, arms: dict[str, str], metrics: tuple[str, ...],
             seconds: float) -> pa.Table:
    """STUDY_ROWS of one finished pipeline run: a row per arm and test prompt. `arms` maps each arm
    to its method."""
    evaluation = store.read_table(plan.ref("evaluate"), EVALUATION).drop(["image"])
    labels = list(dict.fromkeys(evaluation.column("method").to_pylist()))
    report = Report.from_json(store.read_file(plan.ref("report"), "report.json")) if plan.has("report") else None
    dose, injected = measured_dose(store.read_table(plan.ref("pairs"), PAIRS))
    by_label: dict[str, list[dict[str, Any]]] = {}
    for row in evaluation.to_pylist():
        by_label.setdefault(row["method"], []).append(row)
    out: list[dict[str, Any]] = []
    for arm, method in arms.items():
        label = evaluated_label(method, labels, report)
        for row in by_label[label]:
            scores = dict(row["scores"])
            out.append(dict(
                run_index=run.index, seed=run.seed, kind=run.dose.kind, share=run.dose.share, arm=arm, run=label,
                dataset=row["dataset"],
                prompt_id=row["prompt_id"], scores=[(m, scores[m]) for m in metrics],
                loses_content=loses_content(row["prompt"], row["rewrite"]), loops=loops(row["rewrite"]),
                semantic_distance=row["semantic_distance"], chosen_loses_content=dose, chosen_injected=injected,
                run_seconds=seconds,
            ))
    return pa.Table.from_pylist(out, schema=STUDY_ROWS)
