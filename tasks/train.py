"""Train stage: one preference method (DPO or Sem-DPO) from the SFT checkpoint, on the shared pairs.

Checkpoints go to the store every `train.checkpoint_every` steps; a rerun of a failed train stage
resumes from the newest intact one instead of step 0.
"""

from __future__ import annotations

import logging

import pyarrow as pa

from semdpo_core.config import PipelineConfig
from semdpo_core.models import resolve_device
from semdpo_core.schemas import PAIRS, TRAIN_LOG, WEIGHTS
from semdpo_core.store import DatasetRef
from semdpo_core.train import PreferenceData, train_from_sft
from tasks.common import checkpoint_dir, checkpoint_files, open_store, release_models, stage_task

log = logging.getLogger("semdpo.train")


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
    release_models()  # training needs the memory that cached inference models hold
    latest = store.latest_checkpoint(ref)
    if latest is not None:
        log.info("%s: found a checkpoint at step %d in the store", method, latest[0])

    def save(step: int, files: dict[str, bytes]) -> None:
        log.info("%s: checkpoint at step %d -> %s", method, step, store.write_checkpoint(ref, step, files))

    policy, tokenizer, history = train_from_sft(
        checkpoint_dir(config, sft), data, method, config.train, resolve_device(config.device), config.seed,
        save_checkpoint=save, resume_from=latest[1] if latest else None,
    )
    log_table = pa.Table.from_pylist([{"method": method, **h} for h in history], schema=TRAIN_LOG)
    mean_weight = sum(data.semantic_weight) / len(data)
    meta = {"method": method, "pairs": len(data), "final_loss": history[-1]["loss"], "mean_weight": mean_weight}
    return store.write_dataset(ref, TRAIN_LOG, log_table, files=checkpoint_files(policy, tokenizer), meta=meta)
