"""Weigh stage: the offline semantic distance and weight of every pair's chosen rewrite."""

from __future__ import annotations

import pyarrow as pa

from semdpo_core.config import PipelineConfig
from semdpo_core.models import resolve_device
from semdpo_core.schemas import PAIRS, WEIGHTS
from semdpo_core.store import DatasetRef
from semdpo_core.weigh import SemanticEncoder, semantic_weights
from tasks.common import open_store, stage_task


@stage_task("weigh")
def weigh(config: PipelineConfig, ref: DatasetRef, pairs: DatasetRef) -> DatasetRef:
    store = open_store(config)
    table = store.read_table(pairs, PAIRS)
    w = config.weigh
    encoder = SemanticEncoder(w.encoder, resolve_device(config.device))
    distance, weight = semantic_weights(
        encoder, table.column("prompt").to_pylist(), table.column("chosen").to_pylist(), w.alpha, w.batch_size
    )
    out = table.append_column("semantic_distance", pa.array(distance, pa.float64()))
    out = out.append_column("semantic_weight", pa.array(weight, pa.float64()))
    meta = {"alpha": w.alpha, "mean_weight": sum(weight) / len(weight), "effective_pairs": sum(weight)}
    return store.write_dataset(ref, WEIGHTS, out, meta=meta)
