"""Label stage: the reward model scores every image against its original prompt (one shard per
images part); the pairs step then picks chosen and rejected per prompt."""

from __future__ import annotations

import pyarrow as pa

from semdpo_core.config import PipelineConfig
from semdpo_core.label import score_images, select_pairs
from semdpo_core.models import resolve_device
from semdpo_core.config import ScorerConfig
from semdpo_core.schemas import CANDIDATES, FIDELITY, IMAGES, PAIRS, REWARDS
from semdpo_core.store import DatasetRef
from tasks.common import ShardedStage, open_store, scorer_model, stage_task


def score_shard(
    config: PipelineConfig, shard: int, candidates: DatasetRef, images: DatasetRef, scorer_config: ScorerConfig,
    batch_size: int, column: str,
) -> pa.Table:
    """Score one shard's images against their ORIGINAL prompts; one row per candidate."""
    store = open_store(config)
    cands = store.read_part(candidates, shard, CANDIDATES)
    imgs = store.read_part(images, shard, IMAGES)
    prompt_of = dict(zip(cands.column("candidate_id").to_pylist(), cands.column("prompt").to_pylist()))
    scorer = scorer_model(scorer_config, str(resolve_device(config.device)))
    ids = imgs.column("candidate_id").to_pylist()
    scores = score_images(
        scorer, imgs.column("image").to_pylist(), [prompt_of[i] for i in ids], batch_size, desc=f"{column} shard {shard}"
    )
    return pa.table({"candidate_id": ids, "prompt_id": imgs.column("prompt_id"), column: pa.array(scores, pa.float64())})


def label_shard(config: PipelineConfig, shard: int, candidates: DatasetRef, images: DatasetRef) -> pa.Table:
    return score_shard(config, shard, candidates, images, config.label.reward_model, config.label.batch_size, "reward")


def fidelity_shard(config: PipelineConfig, shard: int, candidates: DatasetRef, images: DatasetRef) -> pa.Table:
    return score_shard(config, shard, candidates, images, config.fidelity.scorer, config.fidelity.batch_size, "fidelity")


label = ShardedStage("label", REWARDS, label_shard)
fidelity = ShardedStage("fidelity", FIDELITY, fidelity_shard)


@stage_task("pairs")
def pairs(config: PipelineConfig, ref: DatasetRef, candidates: DatasetRef, rewards: DatasetRef) -> DatasetRef:
    store = open_store(config)
    table = store.read_table(rewards, REWARDS)
    scores = dict(zip(table.column("candidate_id").to_pylist(), table.column("reward").to_pylist()))
    out = select_pairs(store.read_table(candidates, CANDIDATES), scores)
    if out.num_rows == 0:
        raise ValueError("no preference pairs: every prompt's candidates tied; raise candidates.num_candidates")
    return store.write_dataset(ref, PAIRS, out)
