"""Statistics across seeds: the unit of replication of a study is the seed (each seed moves the SFT
rewriter, the candidates and training), with the test prompts nested in it.

- `paired_difference`: an arm minus the baseline, per seed (the same test prompts in both), its
  mean over seeds, a 95% interval from a two-level bootstrap (seeds resampled, then prompts within
  each), and scipy.stats.wilcoxon's signed-rank test across the seeds' differences;
- `dose_slope`: how the difference grows with the dose, least squares over (dose, seed) points,
  with a bootstrap interval over seeds.

The nested bootstrap is written here: scipy.stats.bootstrap resamples one level only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import wilcoxon


@dataclass(frozen=True)
class Difference:
    """An arm minus the baseline at one dose: over seeds, with its interval and test."""

    seeds: int
    mean: float
    low: float
    high: float
    p_value: float  # Wilcoxon signed-rank across seeds, two-sided (1.0 when every seed's difference is 0)
    higher: int  # seeds in which the arm is above the baseline
    per_seed: tuple[float, ...]


@dataclass(frozen=True)
class Slope:
    """The difference's change per unit of dose, with its bootstrap interval over seeds."""

    slope: float
    low: float
    high: float


def paired_difference(arm: dict[int, np.ndarray], baseline: dict[int, np.ndarray], resamples: int,
                      confidence: float, seed: int) -> Difference:
    """`arm` and `baseline` map each seed to its per-prompt values, in the same prompt order."""
    seeds = sorted(set(arm) & set(baseline))
    if not seeds:
        raise ValueError("no seed has both the arm and the baseline")
    diffs = [arm[s] - baseline[s] for s in seeds]
    for s, d in zip(seeds, diffs):
        if not len(d):
            raise ValueError(f"seed {s}: no test prompt to compare")
    per_seed = np.array([d.mean() for d in diffs])
    rng = np.random.default_rng(seed)
    boot = np.empty(resamples)
    for i in range(resamples):
        picked = rng.integers(len(diffs), size=len(diffs))
        boot[i] = np.mean([diffs[k][rng.integers(len(diffs[k]), size=len(diffs[k]))].mean() for k in picked])
    tail = (1 - confidence) / 2
    low, high = np.quantile(boot, [tail, 1 - tail])
    return Difference(len(seeds), float(per_seed.mean()), float(low), float(high), signed_rank_p(per_seed),
                      int((per_seed > 0).sum()), tuple(float(v) for v in per_seed))


def signed_rank_p(per_seed: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of the seeds' differences (1.0 if all are zero)."""
    if len(per_seed) < 2 or np.all(per_seed == 0):
        return 1.0
    return float(wilcoxon(per_seed).pvalue)


def dose_slope(by_dose: dict[float, dict[int, float]], resamples: int, confidence: float, seed: int) -> Slope:
    """Least-squares slope of the per-seed difference against the dose; the interval resamples
    seeds (each keeps all its doses)."""
    seeds = sorted({s for per_seed in by_dose.values() for s in per_seed})
    points = {s: [(dose, per_seed[s]) for dose, per_seed in by_dose.items() if s in per_seed] for s in seeds}

    def fit(chosen: list[int]) -> float:
        xs = np.array([x for s in chosen for x, _ in points[s]])
        ys = np.array([y for s in chosen for _, y in points[s]])
        if len(set(xs.tolist())) < 2:
            return math.nan
        return float(np.polyfit(xs, ys, 1)[0])

    rng = np.random.default_rng(seed)
    boot = np.array([fit([seeds[k] for k in rng.integers(len(seeds), size=len(seeds))]) for _ in range(resamples)])
    boot = boot[~np.isnan(boot)]
    tail = (1 - confidence) / 2
    low, high = np.quantile(boot, [tail, 1 - tail]) if len(boot) else (math.nan, math.nan)
    return Slope(fit(seeds), float(low), float(high))
