"""SFT stage: fine-tune the base rewriter on (original, rewrite) pairs; the checkpoint goes to the store."""

from __future__ import annotations

import pyarrow as pa

from semdpo_core.config import PipelineConfig
from semdpo_core.models import load_rewriter, resolve_device
from semdpo_core.prompts import read_records
from semdpo_core.schemas import SFT_LOG
from semdpo_core.sft import check_rewrites, held_out_share, plain_content_words, train_sft
from semdpo_core.world.grammar import content_words as world_content_words
from semdpo_core.world.sources import PREFIX as WORLD_PREFIX
from semdpo_core.store import DatasetRef
from tasks.common import checkpoint_files, open_store, stage_task


@stage_task("sft")
def sft(config: PipelineConfig, ref: DatasetRef) -> DatasetRef:
    records = read_records(config.data.sft_pairs, ["original", "rewrite"])
    model, tokenizer = load_rewriter(config.sft.base_model, resolve_device(config.device))
    s = config.sft
    # the last pairs stay out of training; the check below rewrites those of their originals never trained on
    train = records[: len(records) - held_out_share(len(records), s.check_pairs)]
    history = train_sft(
        model, tokenizer, [r.fields["original"] for r in train], [r.fields["rewrite"] for r in train],
        epochs=s.epochs, learning_rate=s.learning_rate, batch_size=s.batch_size, max_length=s.max_length,
        seed=config.seed, precision=s.precision, lr_schedule=s.lr_schedule,
    )
    world = config.data.sft_pairs.startswith(WORLD_PREFIX)  # the world knows its content words exactly
    seen = {r.fields["original"] for r in train}
    unseen = list(dict.fromkeys(r.fields["original"] for r in records[len(train) :] if r.fields["original"] not in seen))
    check = check_rewrites(
        model, tokenizer, unseen,
        content_words=world_content_words if world else plain_content_words,
        max_new_tokens=s.check_max_new_tokens, batch_size=s.batch_size,
    )
    return open_store(config).write_dataset(
        ref, SFT_LOG, pa.Table.from_pylist(history, schema=SFT_LOG), files=checkpoint_files(model, tokenizer),
        meta={"pairs": len(train), "final_loss": history[-1]["loss"], **check},
    )
