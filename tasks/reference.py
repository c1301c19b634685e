"""Reference stage: the SFT model's log-probs of every pair's rewrites, computed once and stored
with the pairs, so that training holds only the policy."""

from __future__ import annotations

import pyarrow as pa

from semdpo_core.config import PipelineConfig
from semdpo_core.models import resolve_device
from semdpo_core.schemas import REFERENCE
from semdpo_core.store import DatasetRef
from semdpo_core.train import PreferenceData, mixed_precision, reference_logps
from tasks.common import ShardedStage, checkpoint_dir, inference_model
from tasks.weigh import pairs_shard


def reference_shard(config: PipelineConfig, shard: int, sft: DatasetRef, pairs: DatasetRef) -> pa.Table:
    table = pairs_shard(config, pairs, shard)
    # KTO's mismatched completion of a shard's last pair wraps within the shard: a fixed, stored choice
    data = PreferenceData(
        table.column("prompt").to_pylist(), table.column("chosen").to_pylist(), table.column("rejected").to_pylist(),
        [0.0] * table.num_rows,
    )
    device = resolve_device(config.device)
    model, tokenizer = inference_model("reference", checkpoint_dir(config, sft), str(device))
    autocast, _ = mixed_precision(device, config.train.precision)
    with autocast:
        ref = reference_logps(model, tokenizer, data, config.train.batch_size, config.train.max_length)
    return pa.table(
        {
            "prompt_id": table.column("prompt_id"),
            "reference_chosen_logps": pa.array(ref.chosen.tolist(), pa.float64()),
            "reference_rejected_logps": pa.array(ref.rejected.tolist(), pa.float64()),
            "kl_completion": pa.array(data.kl_completions(), pa.string()),
            "reference_kl_logps": pa.array(ref.kl.tolist(), pa.float64()),
            "chosen_tokens": pa.array(ref.chosen_tokens.long().tolist(), pa.int64()),
            "rejected_tokens": pa.array(ref.rejected_tokens.long().tolist(), pa.int64()),
        }
    )


reference = ShardedStage("reference", REFERENCE, reference_shard)
