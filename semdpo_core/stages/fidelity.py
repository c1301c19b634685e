"""The fidelity stage: a text-fidelity score per rendered candidate, for the additive-reward
baseline (paper, App. D); it runs only when a trained method declares it uses fidelity."""

from __future__ import annotations

import pyarrow as pa

from semdpo_core.pipeline.stage_context import StageContext
from semdpo_core.stages.label import score_shard


def fidelity_shard(ctx: StageContext, shard: int) -> pa.Table:
    """The fidelity score of every image of candidates part `shard` against its ORIGINAL prompt (FIDELITY)."""
    return score_shard(ctx, shard, ctx.settings.scorer, ctx.settings.batch_size, "fidelity")


def fidelity_margins(scores: pa.Table, pairs: pa.Table) -> list[float]:
    """f(y_w) - f(y_l) for each pair, from the per-candidate fidelity scores."""
    f = dict(zip(scores.column("candidate_id").to_pylist(), scores.column("fidelity").to_pylist()))
    return [f[c] - f[r] for c, r in zip(pairs.column("chosen_id").to_pylist(), pairs.column("rejected_id").to_pylist())]
