"""The paper's statistics of a pairwise human study (section 5.3, after Schuff et al. 2023), per
pair of methods: the counts (Table 4), the overall share with its Clopper-Pearson interval and a
two-sided binomial test; per participant their rate, a binomial test each and a signed-rank test
of the rates across participants; per prompt the counts, majorities and a signed-rank test of the
rates across prompts. All tests from scipy.stats."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
from pydantic import BaseModel
from scipy import stats

from semdpo_core.human_eval.design import HumanStudy
from semdpo_core.human_eval.votes import Vote


class Share(BaseModel):
    """How often the first method of a pair was preferred, out of n."""

    first: int
    n: int
    rate: float
    low: float  # Clopper-Pearson interval
    high: float
    p_value: float  # two-sided binomial test against 0.5


class Unit(BaseModel):
    """One participant's or one prompt's votes on a pair."""

    key: str  # participant number, or dataset/prompt id
    prompt: str = ""
    share: Share


class SignedRank(BaseModel):
    """Wilcoxon signed-rank test of the units' rates against 0.5 (units at exactly 0.5 dropped)."""

    units: int
    majority_first: int  # units whose rate is above 0.5
    majority_second: int
    median_rate: float
    statistic: float | None
    p_value: float | None  # None: no unit off 0.5


class Comparison(BaseModel):
    """Everything the report says of one pair of methods."""

    first: str
    second: str
    counts: dict[str, int]  # method -> times preferred (Table 4)
    overall: Share
    participants: list[Unit]
    per_participant: SignedRank
    prompts: list[Unit]
    per_prompt: SignedRank


class HumanSummary(BaseModel):
    study: str
    question: str
    participants_voted: int
    votes: int
    confidence: float
    comparisons: list[Comparison]


def share(first: int, n: int, confidence: float) -> Share:
    """The first method's share of n votes, its exact interval and binomial test."""
    if n == 0:
        return Share(first=0, n=0, rate=math.nan, low=0.0, high=1.0, p_value=1.0)
    test = stats.binomtest(first, n, 0.5)
    interval = test.proportion_ci(confidence_level=confidence, method="exact")
    return Share(first=first, n=n, rate=first / n, low=float(interval.low), high=float(interval.high),
                 p_value=float(test.pvalue))


def signed_rank(units: list[Unit]) -> SignedRank:
    """Signed-rank test of the units' rates against 0.5 across units."""
    rates = np.array([u.share.rate for u in units if u.share.n > 0])
    off = rates[rates != 0.5] - 0.5
    statistic = p = None
    if len(off):
        result = stats.wilcoxon(off)
        statistic, p = float(result.statistic), float(result.pvalue)
    return SignedRank(units=len(rates), majority_first=int((rates > 0.5).sum()),
                      majority_second=int((rates < 0.5).sum()),
                      median_rate=float(np.median(rates)) if len(rates) else math.nan, statistic=statistic, p_value=p)


def summarise(study: HumanStudy, votes: list[Vote], confidence: float = 0.95) -> HumanSummary:
    """Every table of the report, a comparison per pair of methods."""
    items = {i.id: i for i in study.items}
    comparisons = []
    for first, second in study.comparisons:
        by_participant: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        by_prompt: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        prompt_text: dict[tuple[str, str], str] = {}
        for vote in votes:
            item = items[vote.item]
            if (item.a.method, item.b.method) != (first, second):
                continue
            preferred = (item.a if vote.chosen == "a" else item.b).method
            hit = int(preferred == first)
            key = (item.dataset, item.prompt_id)
            prompt_text[key] = item.prompt
            for counts in (by_participant[vote.participant], by_prompt[key]):
                counts[0] += hit
                counts[1] += 1
        n = sum(c[1] for c in by_participant.values())
        k = sum(c[0] for c in by_participant.values())
        people = [Unit(key=str(p), share=share(c[0], c[1], confidence)) for p, c in sorted(by_participant.items())]
        prompts = [Unit(key=f"{d}/{pid}", prompt=prompt_text[(d, pid)], share=share(c[0], c[1], confidence))
                   for (d, pid), c in sorted(by_prompt.items())]
        comparisons.append(Comparison(first=first, second=second, counts={first: k, second: n - k},
                                      overall=share(k, n, confidence), participants=people,
                                      per_participant=signed_rank(people), prompts=prompts,
                                      per_prompt=signed_rank(prompts)))
    return HumanSummary(study=study.name, question=study.question, participants_voted=len({v.participant
                                                                                           for v in votes}),
                        votes=len(votes), confidence=confidence, comparisons=comparisons)
