"""Train stage: one preference method (DPO or Sem-DPO) from the SFT checkpoint, on the shared pairs."""

from __future__ import annotations

import pyarrow as pa

from semdpo_core.config import PipelineConfig
from semdpo_core.models import load_rewriter, resolve_device
from semdpo_core.schemas import PAIRS, TRAIN_LOG, WEIGHTS
from semdpo_core.store import DatasetRef
from semdpo_core.train import PreferenceData, reference_logps, train_preference
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
    t = config.train
    device = resolve_device(config.device)
    sft_dir = checkpoint_dir(config, sft)
    reference, tokenizer = load_rewriter(sft_dir, device)
    ref_chosen, ref_rejected = reference_logps(reference, tokenizer, data, t.batch_size, t.max_length)
    del reference
    policy, tokenizer = load_rewriter(sft_dir, device)
    history = train_preference(
        policy, tokenizer, data, ref_chosen, ref_rejected, method=method, beta=t.beta,
        learning_rate=t.learning_rate, batch_size=t.batch_size, epochs=t.epochs, max_length=t.max_length,
        seed=config.seed,
    )
    log = pa.Table.from_pylist([{"method": method, **h} for h in history], schema=TRAIN_LOG)
    meta = {"method": method, "pairs": len(data), "final_loss": history[-1]["loss"]}
    return store.write_dataset(ref, TRAIN_LOG, log, files=checkpoint_files(policy, tokenizer), meta=meta)
