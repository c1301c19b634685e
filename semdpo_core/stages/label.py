"""The label stage: the reward model scores every image against its ORIGINAL prompt, one shard
per candidates part (the pairs stage then picks chosen and rejected)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from semdpo_core.models.batching import device_memory, map_in_batches
from semdpo_core.models.inference import loaded
from semdpo_core.pipeline.config import ScorerConfig
from semdpo_core.pipeline.schemas import CANDIDATES, IMAGES
from semdpo_core.pipeline.stage_context import StageContext
from semdpo_core.scorers import load_scorer
from semdpo_core.scorers.base import Scorer, decode_png


def score_images(scorer: Scorer, images: list[bytes], prompts: list[str], batch_size: int,
                 desc: str = "score") -> list[float]:
    """The scorer's score of each PNG image against its prompt (batches sized to the GPU's free memory)."""
    return map_in_batches(
        lambda batch: scorer.score([decode_png(b) for b in images[batch]], prompts[batch]), len(images), batch_size,
        desc=desc, unit="image", memory=device_memory(scorer.device),
    )


def scorer_of(settings: Mapping[str, Any], device: Any) -> Scorer:
    """The scorer a ScorerConfig's settings name, loaded once per worker process."""
    return loaded(load_scorer, ScorerConfig.model_validate(dict(settings)), device)


def score_shard(ctx: StageContext, shard: int, scorer: Mapping[str, Any], batch_size: int, column: str) -> pa.Table:
    """Score candidates part `shard`'s images against their ORIGINAL prompts; one row per candidate."""
    cands = ctx.store.read_part(ctx.inputs["candidates"], shard, CANDIDATES)
    imgs = ctx.store.read_part(ctx.inputs["render"], shard, IMAGES)
    prompt_of = dict(zip(cands.column("candidate_id").to_pylist(), cands.column("prompt").to_pylist()))
    ids = imgs.column("candidate_id").to_pylist()
    scores = score_images(scorer_of(scorer, ctx.device), imgs.column("image").to_pylist(), [prompt_of[i] for i in ids],
                          batch_size, desc=f"{column} shard {shard}")
    return pa.table({"candidate_id": ids, "prompt_id": imgs.column("prompt_id"),
                     column: pa.array(scores, pa.float64())})


def label_shard(ctx: StageContext, shard: int) -> pa.Table:
    """The reward of every image of shard `shard` (REWARDS)."""
    return score_shard(ctx, shard, ctx.settings.reward_model, ctx.settings.batch_size, "reward")
