"""The prompts stage: the train prompts and every test set, cleaned and checked, as one table.

Blank prompts are skipped and duplicates dropped, each counted in the log; a prompt too long for
the rewriter is reported with its line and skipped, never cut; a test prompt is never trained on.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import pyarrow as pa

from semdpo_core.data.prompt_sources import (
    PromptFileError,
    Record,
    field_error,
    prompt_id,
    read_records,
)
from semdpo_core.models.loading import pretrained
from semdpo_core.models.rewriter import prompt_token_count
from semdpo_core.pipeline.config import PipelineConfig, named_test_sets
from semdpo_core.pipeline.schemas import PROMPTS
from semdpo_core.pipeline.stage_context import Output, StageContext
from semdpo_core.stages.pairs import own_pairs_table

log = logging.getLogger("semdpo.prompts")


# Terminal escape sequences (colours, cursor moves), then any other control character; a tab or
# a vertical tab is whitespace and becomes a space like every other run of whitespace.
ESCAPE_SEQUENCE = re.compile(r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")
CONTROL = re.compile(r"[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f]")
SHOWN_LINES = 5  # line numbers quoted in one summary line


def strip_controls(text: str) -> str:
    """The text without terminal escape sequences and control characters (NUL, ESC, DEL, C1)."""
    return CONTROL.sub("", ESCAPE_SEQUENCE.sub("", text))


def clean_text(raw: str) -> str:
    """A prompt as the prompts stage keeps it: no control characters, whitespace normalised."""
    return " ".join(strip_controls(raw).split())


def clean_prompts(records: list[Record], column: str) -> list[Record]:
    """Normalise whitespace, remove control characters, skip blank prompts and drop exact
    duplicates (first one kept), logging the counts with the file's name."""
    seen: set[str] = set()
    kept, blank, duplicate, controlled = [], 0, 0, []
    for record in records:
        raw = record.fields[column]
        text = clean_text(raw)
        if text != " ".join(raw.split()):
            controlled.append(record.source)
        if not text:
            blank += 1
        elif text in seen:
            duplicate += 1
        else:
            seen.add(text)
            kept.append(Record({**record.fields, column: text}, record.source))
    name = f"{records[0].source.rpartition(':')[0]}: " if records else ""
    if controlled:
        log.warning("%s%d prompt(s) held control characters or terminal escapes, removed (first at %s)",
                    name, len(controlled), controlled[0])
    log.info("%s%d prompts kept, %d blank skipped, %d duplicates dropped", name, len(kept), blank, duplicate)
    return kept


def line_list(sources: list[str]) -> str:
    """The first few `file:line` places as their line numbers ("lines 3, 17, 20 and 5,492 more")."""
    numbers = [place.rpartition(":")[2] for place in sources[:SHOWN_LINES]]
    more = f" and {len(sources) - SHOWN_LINES:,} more" if len(sources) > SHOWN_LINES else ""
    label = ("line " if len(sources) == 1 else "lines ") if all(n.isdigit() for n in numbers) else ""
    return f"{label}{', '.join(numbers)}{more}"


def load_split(source: str, column: str, limit: int | None, too_long: Callable[[str], int | None]) -> list[Record]:
    """Clean prompts of one source; over-long ones are skipped, never cut, and reported in one
    line with their first few line numbers."""
    records = clean_prompts(read_records(source, [column]), column)
    lengths = [too_long(record.fields[column]) for record in records]
    kept = [record for record, tokens in zip(records, lengths, strict=True) if tokens is None]
    skipped = [(record.source, tokens) for record, tokens in zip(records, lengths, strict=True) if tokens is not None]
    if skipped:
        log.warning("%s: %d prompt(s) too long for the rewriter were skipped (%s; the longest %d tokens)",
                    source, len(skipped), line_list([place for place, _ in skipped]), max(t for _, t in skipped))
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
        empty.append(f"validation (train.validation_prompts {validation}, "
                     f"{len(held_out)} training prompts to hold out)")
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


def check_inputs(config: PipelineConfig) -> None:
    """Read every input file once, so that bad data stops a run before any stage starts: a file
    that cannot be read, or one without a usable prompt (empty, blank lines only, every prompt
    too long for the rewriter), is refused naming its config field."""
    d = config.data
    too_long = token_limit(config.sft.base_model, d.max_prompt_tokens)
    sources = {"data.train_prompts": d.train_prompts, **{f"data.test_prompts ({name})": source
                                                          for name, source in d.test_sets().items()}}
    for field, source in sources.items():
        try:
            _check_usable(field, source, d.prompt_column, too_long, d.max_prompt_tokens)
        except PromptFileError as e:  # a read error names the file; say which field names it
            raise field_error(field, e, d.build is not None) from None
    if d.preference_pairs is not None:
        own_pairs_table(d.preference_pairs)  # readable, the three columns, a pair at least
    if not read_records(d.sft_pairs, ["original", "rewrite"]):
        raise PromptFileError(f"{d.sft_pairs} (data.sft_pairs): holds no pairs; the SFT stage needs at least one")


def _check_usable(field: str, source: str, column: str, too_long: Callable[[str], int | None], limit: int) -> None:
    """Refuse a prompt source with nothing the prompts stage could keep, saying why."""
    records = read_records(source, [column])
    texts = [clean_text(r.fields[column]) for r in records]
    texts = [t for t in texts if t]
    if not records:
        raise PromptFileError(f"{source} ({field}): holds no prompts (an empty file)")
    if not texts:
        raise PromptFileError(f"{source} ({field}): holds only blank lines, no prompt")
    if all(too_long(text) is not None for text in texts):  # stops at the first prompt that fits
        shortest = min(too_long(text) or 0 for text in texts)
        raise PromptFileError(
            f"{source} ({field}): every one of its {len(texts):,} prompts is longer than data.max_prompt_tokens "
            f"({limit} tokens; the shortest has {shortest}); raise the limit or shorten the prompts"
        )


def token_limit(tokenizer_name: str, max_tokens: int) -> Callable[[str], int | None]:
    """A prompt's token count when it exceeds `max_tokens` in the rewriter's posed form, else None."""
    from transformers import AutoTokenizer

    tokenizer = pretrained(AutoTokenizer, tokenizer_name)

    def too_long(text: str) -> int | None:
        n = prompt_token_count(tokenizer, text)
        return n if n > max_tokens else None

    return too_long


def prompts_stage(ctx: StageContext) -> Output:
    """Read, clean and check the train and test prompt files into the PROMPTS table."""
    d = ctx.settings.data
    too_long = token_limit(ctx.settings.tokenizer, d.max_prompt_tokens)
    test_sets = named_test_sets(d.test_prompts)
    validation = ctx.settings.get("validation_prompts", 0)  # declared only when alpha is chosen (train.alpha: auto)
    table = prompt_table(d.train_prompts, test_sets, d.prompt_column, d.max_train_prompts, d.max_test_prompts, too_long,
                         validation)
    datasets = table.column("dataset").to_pylist()
    return Output(table, meta={"train_prompts": datasets.count("train"),
                               "validation_prompts": datasets.count("validation"),
                               "test_prompts": {name: datasets.count(name) for name in test_sets}})
