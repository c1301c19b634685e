"""Train stage: one preference method (DPO or Sem-DPO) from the SFT checkpoint, on the shared pairs."""

from __future__ import annotations

import pyarrow as pa

from semdpo_core.config import PipelineConfig
from semdpo_core.models import resolve_device
from semdpo_core.schemas import PAIRS, TRAIN_LOG, WEIGHTS
from semdpo_core.store import DatasetRef
from semdpo_core.train import PreferenceData, train_from_sft
from tasks.common import checkpoint_dir, checkpoint_files, open_store, stage_task


@stage_task("train")
def train(config: PipelineConfig, ref: DatasetRef, method: str, sft: DatasetRef, pairs: DatasetRef) -> DatasetRef:
    store = open_store(config)
    weighted = method == "sem_dpo"
    table = store.read_table(pairs, WEIGHTS if weighted else PAIRS)
    data = PreferenceData(
        prompts=table.column("prompt").to_pylist(),
        chosen=table.column("chosen").to_pylist(),
        rejected=table.column("rejected").to_pylist(),
        semantic_weight=table.column("semantic_weight").to_pylist() if weighted else [1.0] * table.num_rows,
    )
    policy, tokenizer, history = train_from_sft(
        checkpoint_dir(config, sft), data, method, config.train, resolve_device(config.device), config.seed
    )
    log = pa.Table.from_pylist([{"method": method, **h} for h in history], schema=TRAIN_LOG)
    meta = {"method": method, "pairs": len(data), "final_loss": history[-1]["loss"]}
    return store.write_dataset(ref, TRAIN_LOG, log, files=checkpoint_files(policy, tokenizer), meta=meta)
