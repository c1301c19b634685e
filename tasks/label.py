"""Label stage: the reward model scores every image against its original prompt (one shard per
images part); the pairs step then picks chosen and rejected per prompt."""

from __future__ import annotations

import pyarrow as pa

from semdpo_core.config import PipelineConfig
from semdpo_core.label import score_images, select_pairs
from semdpo_core.models import resolve_device
from semdpo_core.schemas import CANDIDATES, IMAGES, PAIRS, REWARDS
from semdpo_core.store import DatasetRef
from tasks.common import ShardedStage, inference_model, open_store, stage_task


def label_shard(config: PipelineConfig, shard: int, candidates: DatasetRef, images: DatasetRef) -> pa.Table:
    store = open_store(config)
    cands = store.read_part(candidates, shard, CANDIDATES)
    imgs = store.read_part(images, shard, IMAGES)
    prompt_of = dict(zip(cands.column("candidate_id").to_pylist(), cands.column("prompt").to_pylist()))
    rm = config.label.reward_model
    scorer = inference_model(f"scorer:{rm.kind}", rm.model, str(resolve_device(config.device)), rm.processor)
    ids = imgs.column("candidate_id").to_pylist()
    rewards = score_images(
        scorer, imgs.column("image").to_pylist(), [prompt_of[i] for i in ids], config.label.batch_size,
        desc=f"label shard {shard}",
    )
    return pa.table({"candidate_id": ids, "prompt_id": imgs.column("prompt_id"), "reward": pa.array(rewards, pa.float64())})


label = ShardedStage("label", REWARDS, label_shard)


@stage_task("pairs")
def pairs(config: PipelineConfig, ref: DatasetRef, candidates: DatasetRef, rewards: DatasetRef) -> DatasetRef:
    store = open_store(config)
    table = store.read_table(rewards, REWARDS)
    scores = dict(zip(table.column("candidate_id").to_pylist(), table.column("reward").to_pylist()))
    out = select_pairs(store.read_table(candidates, CANDIDATES), scores)
    if out.num_rows == 0:
        raise ValueError("no preference pairs: every prompt's candidates tied; raise candidates.num_candidates")
    return store.write_dataset(ref, PAIRS, out)
