"""Paired tests over the test prompts: each method against a baseline (every trained method
against SFT, the focus method against DPO), per metric and for the drift in meaning."""

from __future__ import annotations

import random
import statistics
from collections import defaultdict

import pyarrow as pa
from scipy.stats import binomtest

from semdpo_core.stages.report.document import PairedTest
from semdpo_core.stages.report.tables import DISTANCE, ordered


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
    return 1.0 if wins + losses == 0 else float(binomtest(wins, wins + losses, 0.5).pvalue)


def bootstrap_interval(diffs: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean paired difference (seeded: the same every run)."""
    # by hand, not scipy.stats.bootstrap: its numpy generator draws other resamples, so every stored
    # report's intervals would change
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def paired_tests(evaluation: pa.Table, comparisons: list[tuple[str, str]], tie_tolerance: float) -> list[PairedTest]:
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
            out.append(PairedTest(method=method, baseline=baseline, metric=metric, n=len(diffs),
                                  mean_diff=statistics.fmean(diffs), ci_low=low, ci_high=high,
                                  wins=wins, losses=losses, sign_p=sign_test_p(wins, losses)))
    return out


def comparisons_of(methods: list[str], focus: str | None) -> list[tuple[str, str]]:
    """What the report tests: every trained method against SFT, and the focus method against DPO."""
    pairs = [(m, "sft") for m in methods if m not in ("human", "sft")] if "sft" in methods else []
    if focus and "dpo" in methods and focus != "dpo":
        pairs.append((focus, "dpo"))
    return pairs
