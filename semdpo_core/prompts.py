"""The prompts stage: the train prompts and every test set, cleaned and checked, as one table.

Blank prompts are skipped and duplicates dropped, each counted in the log; a prompt too long for
the rewriter is reported with its line and skipped, never cut; a test prompt is never trained on.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable

import pyarrow as pa

from semdpo_core.config import named_test_sets
from semdpo_core.context import Output, StageContext
from semdpo_core.models import pretrained
from semdpo_core.prompt_files import PromptFileError, Record, read_records
from semdpo_core.rewriter import prompt_token_count
from semdpo_core.schemas import PROMPTS

log = logging.getLogger("semdpo.prompts")


def clean_prompts(records: list[Record], column: str) -> list[Record]:
    """Strip whitespace, skip blank prompts and drop exact duplicates (first one kept), logging counts."""
    seen: set[str] = set()
    kept, blank, duplicate = [], 0, 0
    for record in records:
        text = " ".join(record.fields[column].split())
        if not text:
            blank += 1
        elif text in seen:
            duplicate += 1
        else:
            seen.add(text)
            kept.append(Record({**record.fields, column: text}, record.source))
    log.info("%d prompts kept, %d blank skipped, %d duplicates dropped", len(kept), blank, duplicate)
    return kept


def prompt_id(text: str) -> str:
    """A stable id for a prompt: the same text always gets the same id."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def load_split(source: str, column: str, limit: int | None, too_long: Callable[[str], int | None]) -> list[Record]:
    """Clean prompts of one source; over-long ones are reported with their line and skipped."""
    records = clean_prompts(read_records(source, [column]), column)
    kept = []
    for record in records:
        tokens = too_long(record.fields[column])
        if tokens is not None:
            log.warning("%s: prompt of %d tokens exceeds the rewriter's limit; skipped", record.source, tokens)
        else:
            kept.append(record)
    if len(kept) < len(records):
        log.warning("%s: %d prompt(s) too long for the rewriter were skipped", source, len(records) - len(kept))
    return kept[:limit] if limit else kept


def prompt_table(
    train_source: str,
    test_sources: dict[str, str],
    column: str,
    max_train: int | None,
    max_test: int | None,
    too_long: Callable[[str], int | None],
    validation: int = 0,
) -> pa.Table:
    """The PROMPTS table: train prompts, then each evaluation dataset's test prompts (at most
    `max_test` each); a prompt in any test set is removed from training. `validation` training
    prompts (the first ones) are held out of training as the validation split, to choose alpha."""
    tests = {name: load_split(source, column, max_test, too_long) for name, source in test_sources.items()}
    test_texts = {r.fields[column] for records in tests.values() for r in records}
    train_all = load_split(train_source, column, None, too_long)
    train = [r for r in train_all if r.fields[column] not in test_texts]
    if len(train) < len(train_all):
        log.warning("%d training prompt(s) also in a test set were removed from training", len(train_all) - len(train))
    held_out, train = train[:validation], train[validation:]
    train = train[:max_train] if max_train else train
    empty = [f"{name} ({test_sources[name]})" for name, records in tests.items() if not records]
    if validation and len(held_out) < validation:
        empty.append(f"validation (train.validation_prompts {validation}, {len(held_out)} training prompts to hold out)")
    if not train or empty:
        raise PromptFileError(
            f"no usable prompts: {len(train)} for training ({train_source})"
            + (f"; none in test set(s) {', '.join(empty)}" if empty else "")
        )
    rows = [(r, "train", "train") for r in train] + [(r, "validation", "validation") for r in held_out]
    rows += [(r, "test", name) for name, rs in tests.items() for r in rs]
    return pa.Table.from_pydict(
        {
            "prompt_id": [prompt_id(r.fields[column]) for r, _, _ in rows],
            "prompt": [r.fields[column] for r, _, _ in rows],
            "split": [split for _, split, _ in rows],
            "dataset": [dataset for _, _, dataset in rows],
            "source": [r.source for r, _, _ in rows],
        },
        schema=PROMPTS,
    )


def check_sources(train_prompts: str, test_prompts: dict[str, str], sft_pairs: str, column: str) -> None:
    """Read every input file once, so that bad data stops a run before any stage starts."""
    read_records(train_prompts, [column])
    for source in test_prompts.values():
        read_records(source, [column])
    read_records(sft_pairs, ["original", "rewrite"])


def prompts_stage(ctx: StageContext) -> Output:
    """Read, clean and check the train and test prompt files into the PROMPTS table."""
    from transformers import AutoTokenizer

    d = ctx.settings.data
    tokenizer = pretrained(AutoTokenizer, ctx.settings.tokenizer)

    def too_long(text: str) -> int | None:
        n = prompt_token_count(tokenizer, text)
        return n if n > d.max_prompt_tokens else None

    test_sets = named_test_sets(d.test_prompts)
    validation = ctx.settings.get("validation_prompts", 0)  # declared only when alpha is chosen (train.alpha: auto)
    table = prompt_table(d.train_prompts, test_sets, d.prompt_column, d.max_train_prompts, d.max_test_prompts, too_long,
                         validation)
    datasets = table.column("dataset").to_pylist()
    return Output(table, meta={"train_prompts": datasets.count("train"), "validation_prompts": datasets.count("validation"),
                               "test_prompts": {name: datasets.count(name) for name in test_sets}})
