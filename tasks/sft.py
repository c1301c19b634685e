"""SFT stage: fine-tune the base rewriter on (original, rewrite) pairs; the checkpoint goes to the store."""

from __future__ import annotations

import pyarrow as pa

from semdpo_core.config import PipelineConfig
from semdpo_core.models import load_rewriter, resolve_device
from semdpo_core.prompts import read_records
from semdpo_core.schemas import SFT_LOG
from semdpo_core.sft import train_sft
from semdpo_core.store import DatasetRef
from tasks.common import checkpoint_files, open_store, stage_task


@stage_task("sft")
def sft(config: PipelineConfig, ref: DatasetRef) -> DatasetRef:
    records = read_records(config.data.sft_pairs, ["original", "rewrite"])
    model, tokenizer = load_rewriter(config.sft.base_model, resolve_device(config.device))
    s = config.sft
    history = train_sft(
        model, tokenizer, [r.fields["original"] for r in records], [r.fields["rewrite"] for r in records],
        epochs=s.epochs, learning_rate=s.learning_rate, batch_size=s.batch_size, max_length=s.max_length,
        seed=config.seed, precision=s.precision,
    )
    return open_store(config).write_dataset(
        ref, SFT_LOG, pa.Table.from_pylist(history, schema=SFT_LOG),
        files=checkpoint_files(model, tokenizer), meta={"pairs": len(records), "final_loss": history[-1]["loss"]},
    )
