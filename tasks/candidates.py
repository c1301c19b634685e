"""Candidates stage: sample k rewrites of every training prompt from the SFT rewriter, shard by shard."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from semdpo_core.candidates import sample_candidates
from semdpo_core.config import PipelineConfig
from semdpo_core.models import resolve_device
from semdpo_core.schemas import CANDIDATES, PROMPTS
from semdpo_core.store import ArtifactStore, DatasetRef
from tasks.common import ShardedStage, checkpoint_dir, inference_model, open_store


def train_prompts(store: ArtifactStore, prompts: DatasetRef) -> pa.Table:
    table = store.read_table(prompts, PROMPTS)
    return table.filter(pc.equal(table.column("split"), "train"))


def num_shards(config: PipelineConfig, prompts: DatasetRef) -> int:
    """One shard per `shard_size` training prompts."""
    count = open_store(config).manifest(prompts)["meta"]["train_prompts"]
    return max(1, -(-count // config.shard_size))


def candidates_shard(config: PipelineConfig, shard: int, prompts: DatasetRef, sft: DatasetRef) -> pa.Table:
    store = open_store(config)
    rows = train_prompts(store, prompts).slice(shard * config.shard_size, config.shard_size)
    device = resolve_device(config.device)
    model, tokenizer = inference_model("rewriter", checkpoint_dir(config, sft), str(device))
    c = config.candidates
    return sample_candidates(
        model, tokenizer, rows.column("prompt_id").to_pylist(), rows.column("prompt").to_pylist(),
        num_candidates=c.num_candidates, temperature=c.temperature, top_p=c.top_p,
        max_new_tokens=c.max_new_tokens, batch_size=c.batch_size, seed=config.seed, shard=shard,
    )


candidates = ShardedStage("candidates", CANDIDATES, candidates_shard)
