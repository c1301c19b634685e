"""Weigh stage: the offline semantic distance of every pair's chosen rewrite, shard by shard."""

from __future__ import annotations

import pyarrow as pa

from semdpo_core.config import PipelineConfig
from semdpo_core.models import resolve_device
from semdpo_core.schemas import PAIRS, WEIGHTS
from semdpo_core.store import DatasetRef
from semdpo_core.weigh import semantic_distances
from tasks.common import ShardedStage, inference_model, open_store


def num_shards(config: PipelineConfig, pairs: DatasetRef) -> int:
    """One shard per `shard_size` pairs (weigh and reference)."""
    return max(1, -(-open_store(config).manifest(pairs)["rows"] // config.shard_size))


def pairs_shard(config: PipelineConfig, pairs: DatasetRef, shard: int) -> pa.Table:
    """Shard `shard`'s pairs: rows [shard * shard_size, (shard + 1) * shard_size) of the pairs table."""
    return open_store(config).read_rows(pairs, PAIRS, shard * config.shard_size, config.shard_size)


def weigh_shard(config: PipelineConfig, shard: int, pairs: DatasetRef) -> pa.Table:
    table = pairs_shard(config, pairs, shard)
    encoder = inference_model("encoder", config.weigh.encoder, str(resolve_device(config.device)))
    distance = semantic_distances(
        encoder, table.column("prompt").to_pylist(), table.column("chosen").to_pylist(), config.weigh.batch_size
    )
    return table.append_column("semantic_distance", pa.array(distance, pa.float64()))


weigh = ShardedStage("weigh", WEIGHTS, weigh_shard)
