"""Prompts stage: read, clean and check the train and test prompt files into the prompts table."""

from __future__ import annotations

from semdpo_core.config import PipelineConfig
from semdpo_core.models import pretrained
from semdpo_core.prompts import prompt_table
from semdpo_core.rewriter import prompt_token_count
from semdpo_core.schemas import PROMPTS
from semdpo_core.store import DatasetRef
from tasks.common import open_store, stage_task


@stage_task("prompts")
def prompts(config: PipelineConfig, ref: DatasetRef) -> DatasetRef:
    from transformers import AutoTokenizer

    tokenizer = pretrained(AutoTokenizer, config.sft.base_model)
    limit = config.data.max_prompt_tokens

    def too_long(text: str) -> int | None:
        n = prompt_token_count(tokenizer, text)
        return n if n > limit else None

    d = config.data
    table = prompt_table(d.train_prompts, d.test_sets(), d.prompt_column, d.max_train_prompts, d.max_test_prompts, too_long)
    datasets = table.column("dataset").to_pylist()
    meta = {"train_prompts": datasets.count("train"), "test_prompts": {name: datasets.count(name) for name in d.test_sets()}}
    return open_store(config).write_dataset(ref, PROMPTS, table, meta=meta)
