"""The report as one typed object: what the report stage computes, what report.json holds, and
what the markdown writer and the Prefect artifacts read, by attribute.

report.json is `Report.model_dump()` written with sorted keys; a report.json that an earlier
version wrote reads back as the same `Report` (its fields are the JSON's keys).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict


class Row(BaseModel):
    """One row of a report table: its fields are its columns."""

    model_config = ConfigDict(frozen=True)

    def columns(self) -> dict[str, Any]:
        """The row as {column: value}, for a table artifact."""
        return self.model_dump()


class ScorerNote(BaseModel):
    """A metric's scorer as the config named it (every field of its ScorerConfig that was set)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    kind: str
    model: str


class TokenStats(Row):
    """Rewritten-prompt token length of one method (paper Tables 1-2)."""

    method: str
    n: int
    mean: float
    std: float
    median: float
    max: int
    median_by_dataset: dict[str, float]

    def columns(self) -> dict[str, Any]:
        return self.model_dump(exclude={"median_by_dataset"})


class HeadToHead(Row):
    """How often `method` (the focus) scores above, within the tie tolerance of, or below `versus`
    on one metric, over the test prompts both have (paper Figure 4)."""

    method: str
    versus: str
    metric: str
    n: int
    win: int
    tie: int
    loss: int
    win_rate: float
    tie_rate: float
    loss_rate: float


class DriftRow(Row):
    """Proposition 2 for one method: mean prompt drift, image drift, T2I error, and how often the bound held."""

    method: str
    n: int
    prompt_drift: float
    image_drift: float
    t2i_error: float
    bound_held: float


class Drift(BaseModel):
    """Proposition 2's table and its epsilon (None when drift was not measured)."""

    epsilon: float | None
    methods: list[DriftRow]


class MeaningDrift(Row):
    """Mean and std of d(x, y) = 1 - cos(e(x), e(y)) of one method's rewrites on one dataset."""

    dataset: str
    method: str
    n: int
    mean: float
    std: float


class PairedTest(Row):
    """`method` - `baseline` on one metric, paired over the test prompts: mean, 95% bootstrap
    interval, prompts higher and lower, and the two-sided sign test's p-value."""

    method: str
    baseline: str
    metric: str
    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    wins: int
    losses: int
    sign_p: float


class AlphaScore(Row):
    """One sweep run's normalised average on the validation and the test prompts."""

    method: str
    alpha: float | None
    validation: float
    test: float | None


class AlphaSelection(BaseModel):
    """`train.alpha: auto`: every alpha's scores, the one chosen on validation and the one best on test."""

    by_alpha: list[AlphaScore]
    chosen: str
    chosen_alpha: float | None
    best_on_test: str
    best_on_test_alpha: float | None
    validation_prompts: int


class Report(BaseModel):
    """Everything the report says besides the score table (REPORT_SCORES) and the plots' bytes."""

    scorers: dict[str, ScorerNote]
    datasets: list[str]
    methods: list[str]
    focus: str | None
    normalised_over: list[str] | None
    tokens: list[TokenStats]
    head_to_head: list[HeadToHead]
    drift: Drift
    encoder: str
    meaning_drift: list[MeaningDrift]
    paired_tests: list[PairedTest]
    alpha_selection: AlphaSelection | None
    plots: dict[str, str] = {}  # plot file name -> caption

    def to_json(self) -> bytes:
        """report.json's bytes."""
        return json.dumps(self.model_dump(), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Report:
        """A report.json read back (NaN rates included, as json writes them)."""
        return cls.model_validate(json.loads(data))
