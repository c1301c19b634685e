"""`semdpo data build`: the prompt files that `data.train_prompts` and `data.test_prompts` name,
made from the datasets users have (DiffusionDB's prompt metadata, a Lexica prompt collection,
COCO captions), read with `datasets`.

Each set is cleaned as the prompts stage cleans it; empty, word-listed and duplicate prompts are
dropped, then the set is shuffled with the config's seed and filled to its size, skipping prompts
too long for the rewriter (for any of the backbones). The train set is disjoint from every test set by exact and
near-duplicate match. Every drop is counted. Each file is Parquet, with a record beside it
(`NAME.build.json`): its sources, the commits they resolved to and their data files' sha256, the
filters, the counts and the file's sha256. An existing file with other contents is never replaced
without `--force`.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import logging
import math
import os
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from semdpo_core.data.hub_datasets import (
    DatasetLoadError,
    HubDataset,
    check_revision,
    load_hub,
)
from semdpo_core.data.prompt_sources import PromptFileError, lines
from semdpo_core.pipeline.config import DataBuildConfig, PipelineConfig, PromptSource
from semdpo_core.stages.prompts import clean_text, token_limit
from semdpo_core.store.atomic_files import (
    sync_directory,
    temporary_is_stale,
    write_temporary,
)

log = logging.getLogger("semdpo.data")


@dataclass(frozen=True)
class Layout:
    """Where a source keeps its prompts: the first of `columns` present; with a `groups` column
    (an image id), one prompt per group, so that a test set has one caption per image."""

    columns: tuple[str, ...]
    groups: tuple[str, ...] = ()


LAYOUTS = {
    "diffusiondb": Layout(("prompt",)),  # metadata.parquet and the *_text_only configs
    "lexica": Layout(("Prompt", "prompt")),  # Gustavosta/Stable-Diffusion-Prompts: Prompt
    "coco": Layout(("caption", "sentences", "captions"), ("image_id", "cocoid", "imgid")),  # captions_*.json; Karpathy
    "plain": Layout(("prompt", "text", "caption")),
}


@dataclass
class Candidate:
    """One cleaned prompt, its match key and where it came from."""

    text: str
    key: str
    source: str
    row: int


@dataclass
class BuiltSet:
    """One set as built: its prompts, what was dropped and why, and the sources it read."""

    name: str
    path: Path
    prompts: list[Candidate]
    counts: Counter = field(default_factory=Counter)
    sources: list[dict[str, Any]] = field(default_factory=list)
    wanted: int | None = None  # the size asked for (None: every prompt)
    written: bool = False  # False when the file and its record already held these bytes


def match_key(text: str) -> str:
    """The form two prompts are compared in: lower case, punctuation as spaces, whitespace collapsed."""
    return " ".join(re.sub(r"[\W_]+", " ", text.lower()).split())


class NearDuplicates:
    """Whether a prompt is one of a set of prompts (the same match key) or nearly (word sets with a
    Jaccard similarity of at least `threshold`); prefix filtering keeps it to a few comparisons."""

    def __init__(self, keys: Iterable[str], threshold: float):
        self.keys = set(keys)
        self.threshold = threshold
        self.sets = [frozenset(k.split()) for k in self.keys]
        self.frequency = Counter(w for words in self.sets for w in words)
        self.index: dict[str, list[int]] = defaultdict(list)
        for i, words in enumerate(self.sets):
            for w in self._prefix(words):
                self.index[w].append(i)

    def _prefix(self, words: frozenset[str]) -> list[str]:
        """The rarest words: a set sharing none of them cannot reach the threshold with this one."""
        ordered = sorted(words, key=lambda w: (self.frequency.get(w, 0), w))
        return ordered[: len(words) - math.ceil(self.threshold * len(words) - 1e-9) + 1]

    def match(self, key: str) -> str | None:
        """"same" or "near" when the prompt is (nearly) one of the set, else None."""
        if key in self.keys:
            return "same"
        words = frozenset(key.split())
        for w in self._prefix(words) if words else ():
            for i in self.index.get(w, ()):
                other = self.sets[i]
                if len(words & other) >= self.threshold * len(words | other) - 1e-9:
                    return "near"
        return None


# --- reading and cleaning a source -----------------------------------------------------------------


def hub_dataset(source: PromptSource) -> HubDataset:
    options = {"field": source.field} if source.field else {}
    return HubDataset(source.path, source.name, source.split, source.revision, source.data_files, options)


def prompt_column(source: PromptSource, columns: list[str], where: str) -> str:
    """The column holding the prompt: the config's, or the layout's first that the dataset has."""
    wanted = (source.column,) if source.column else LAYOUTS[source.layout].columns
    for column in wanted:
        if column in columns:
            return column
    raise PromptFileError(f"{where}: no prompt column {' or '.join(map(repr, wanted))}; the dataset has {columns}; "
                          "set its `column` or `layout`")


def cell_texts(value: Any, where: str) -> list[str]:
    """A prompt cell's texts: a string, or every caption of a list (of strings or {raw: ...}); none
    for a missing one. Anything else is a wrong column, not an empty prompt."""
    texts = []
    for cell in value if isinstance(value, list) else [value]:
        text = cell.get("raw") if isinstance(cell, dict) else cell
        if text is not None and not isinstance(text, str):
            raise PromptFileError(f"{where}: the prompt is {value!r} ({type(value).__name__}), not text; "
                                  "set the source's `column` to the column that holds the prompts")
        if text is not None:
            texts.append(text)
    return texts


@dataclass
class Row:
    """One raw prompt of a source: its row, and the image it captions where the layout groups
    captions (an image id column, or a list of captions in one cell)."""

    row: int
    text: str
    group: Any = None


def read_source(source: PromptSource, where: str, counts: Counter) -> tuple[list[Row], dict[str, Any]]:
    """Every raw prompt of every row (a row without one counted as empty), and the provenance to
    record: the load's arguments, the commit it resolved to and its data files' sha256."""
    spec = hub_dataset(source)
    log.info("%s: loading %s", where, spec)
    try:
        dataset, provenance = load_hub(spec)
    except DatasetLoadError as e:
        raise DatasetLoadError(f"{where}: {e}") from None
    column = prompt_column(source, dataset.column_names, f"{where} ({spec})")
    group = next((g for g in LAYOUTS[source.layout].groups if g in dataset.column_names), None)
    values = dataset[column]
    groups = dataset[group] if group else [None] * len(values)
    rows = []
    for row, (value, image) in enumerate(zip(values, groups, strict=True)):
        texts = cell_texts(value, f"{where} ({spec}), row {row}, column {column!r}")
        if not texts:
            counts["empty"] += 1
        image = image if image is not None else (("row", row) if isinstance(value, list) else None)
        rows += [Row(row, text, image) for text in texts]
    counts["read"] += len(values)
    record = {**source.model_dump(exclude_none=True), "column": column, **provenance, "rows": len(values)}
    return rows, record


def clean(rows: list[Row], label: str, words: list[str], seen: set[str], counts: Counter,
          check: Callable[[Candidate], str | None] | None = None) -> list[Candidate]:
    """Cleaned prompts without empty, word-listed or duplicate ones (`seen`: match keys so far), and
    one per image: its first caption that passes these and `check` (a drop reason or None: the
    filters that otherwise run later, on the prompts drawn, are run on an image's captions here)."""
    kept, images = [], set()
    for row in tqdm(rows, desc=f"cleaning {label}", unit="prompt", mininterval=5):
        if row.group is not None and row.group in images:
            counts["same image"] += 1
            continue
        text = clean_text(row.text)
        candidate = Candidate(text, match_key(text), label, row.row)
        key = candidate.key
        reason = ("empty" if not key else "word filter" if words and any(f" {w} " in f" {key} " for w in words)
                  else "duplicate" if key in seen else check(candidate) if check and row.group is not None else None)
        if reason:
            counts[reason] += 1
            continue
        seen.add(key)
        if row.group is not None:
            images.add(row.group)
        kept.append(candidate)
    return kept


def rejects(too_long: Callable[[str], int | None],
            tests: NearDuplicates | None = None) -> Callable[[Candidate], str | None]:
    """Why a prompt is not drawn: too long for a backbone, or (for the train set) a test prompt's twin."""
    def reason(candidate: Candidate) -> str | None:
        return (overlap(tests, candidate) if tests is not None else None) or (
            "too long" if too_long(candidate.text) is not None else None)
    return reason


def overlap(tests: NearDuplicates, candidate: Candidate) -> str | None:
    """Why a train prompt is dropped for a test set: it is one of its prompts, or nearly one."""
    match = tests.match(candidate.key)
    return None if match is None else "in a test set" if match == "same" else "near a test prompt"


def fill(candidates: list[Candidate], size: int | None, seed: int, too_long: Callable[[str], int | None],
         counts: Counter) -> list[Candidate]:
    """`size` prompts drawn in a seeded shuffle, skipping those too long for the rewriter."""
    order = list(candidates)
    random.Random(seed).shuffle(order)
    chosen = []
    for candidate in order:
        if size is not None and len(chosen) == size:
            break
        counts["examined"] += 1
        if too_long(candidate.text) is not None:
            counts["too long"] += 1
        else:
            chosen.append(candidate)
    return chosen


# --- the build -------------------------------------------------------------------------------------


def build_data(config: PipelineConfig, force: bool = False) -> list[BuiltSet]:
    """Make every test set, then the train set disjoint from them, and write each with its record."""
    # 1. what to build, and where: every output a Parquet file data.* names
    build = required_build(config)
    d = config.data
    outputs = {"train": output_path(d.train_prompts, "data.train_prompts")}
    outputs.update({name: output_path(source, f"data.test_prompts.{name}") for name, source in d.test_sets().items()})
    for kind, where in (("file", lambda p: p), ("record", record_path)):
        named = {name: where(path) for name, path in outputs.items()}
        shared = [path for path in set(named.values()) if list(named.values()).count(path) > 1]
        if shared:
            raise PromptFileError(f"{shared[0]} is the {kind} of several sets ("
                                  f"{', '.join(n for n, p in named.items() if p == shared[0])}): "
                                  "give each its own file")
    for where, source in [*((f"data.build.test.{n}", s) for n, s in build.test.items()),
                          *((f"data.build.train[{i}]", s) for i, s in enumerate(build.train))]:
        check_revision(hub_dataset(source), where)
    words = word_list(build.word_filter)
    too_long = longest_of([token_limit(model, d.max_prompt_tokens) for model in config.backbone_configs()])

    # 2. the test sets, each from its own source
    sets = []
    for name, source in build.test.items():
        built = BuiltSet(name, outputs[name], [], wanted=d.max_test_prompts)
        rows, record = read_source(source, f"data.build.test.{name}", built.counts)
        built.sources.append(record)
        cleaned = clean(rows, str(hub_dataset(source)), words, set(), built.counts, rejects(too_long))
        built.prompts = fill(cleaned, built.wanted, config.seed, too_long, built.counts)
        sets.append(built)

    # 3. the train set: every train source pooled, no prompt (nearly) in a test set
    size = None if d.max_train_prompts is None else d.max_train_prompts + validation_size(config)
    train = BuiltSet("train", outputs["train"], [], wanted=size)
    tests = NearDuplicates((p.key for s in sets for p in s.prompts), build.near_duplicate)
    pool: list[Candidate] = []
    seen: set[str] = set()
    for i, source in enumerate(build.train):
        rows, record = read_source(source, f"data.build.train[{i}]", train.counts)
        train.sources.append(record)
        pool += clean(rows, str(hub_dataset(source)), words, seen, train.counts, rejects(too_long, tests))
    disjoint = []
    for candidate in tqdm(pool, desc="test overlap", unit="prompt", mininterval=5):
        reason = overlap(tests, candidate)
        if reason:
            train.counts[reason] += 1
        else:
            disjoint.append(candidate)
    train.prompts = fill(disjoint, train.wanted, config.seed, too_long, train.counts)
    sets.append(train)

    # 4. every file checked, then written, each with its record beside it
    filters = {"tokenizers": list(config.backbone_configs()), "max_prompt_tokens": d.max_prompt_tokens,
               "seed": config.seed, "near_duplicate": build.near_duplicate,
               "word_filter": word_filter_record(build.word_filter, words)}
    write_sets(sets, filters, d.prompt_column, force)
    return sets


def write_sets(sets: list[BuiltSet], filters: dict[str, Any], column: str, force: bool) -> None:
    """Each set's Parquet file and record, none written unless every one can be: a set with no
    prompt, or an existing file with other contents (without `force`), stops the build first."""
    files = {built.name: parquet_bytes(set_table(built, column)) for built in sets}
    for built in sets:
        if built.wanted is not None and len(built.prompts) < built.wanted:
            log.warning("%s: only %d prompts left of the %d asked for", built.name, len(built.prompts), built.wanted)
        built.counts["kept"] = len(built.prompts)
        if not built.prompts:
            raise PromptFileError(f"{built.name}: no prompt is left to write ({counts_line(built.counts)}); "
                                  "check its sources and filters (data.build)")
    writes = {}
    for built in sets:
        writes[built.path] = files[built.name]
        writes[record_path(built.path)] = set_record(built, files, filters)
    unchanged = {path for path, data in writes.items() if path.is_file() and sha256(path) == digest(data)}
    conflicts = [str(path) for path in writes if path.exists() and path not in unchanged]
    if conflicts and not force:
        raise PromptFileError(f"{', '.join(conflicts)} exist{'s' if len(conflicts) == 1 else ''} with other contents; "
                              "move them away or pass --force to replace them")
    remove_stale_temporaries(writes)
    replace_all({path: data for path, data in writes.items() if path not in unchanged})
    for built in sets:
        built.written = not {built.path, record_path(built.path)} <= unchanged
        log.info("%s: %d prompts -> %s%s (%s)", built.name, len(built.prompts), built.path,
                 "" if built.written else " (unchanged)", counts_line(built.counts))


def counts_line(counts: Counter) -> str:
    return ", ".join(f"{n:,} {why}" for why, n in counts.items())


def longest_of(limits: list[Callable[[str], int | None]]) -> Callable[[str], int | None]:
    """Too long for any backbone's tokenizer: every backbone's prompts stage keeps the same prompts."""
    @functools.cache  # an image's captions are measured when cleaned and again when drawn
    def too_long(text: str) -> int | None:
        return max((n for n in (limit(text) for limit in limits) if n is not None), default=None)
    return too_long


def required_build(config: PipelineConfig) -> DataBuildConfig:
    build = config.data.build
    if build is None:
        raise PromptFileError("data.build is not set: name the datasets to build the prompt files from "
                              "(configs/paper.yaml has the paper's)")
    named, built = set(config.data.test_sets()), set(build.test)
    if named != built:
        sides = [f"only data.test_prompts names {sorted(named - built)}" if named - built else "",
                 f"only data.build.test names {sorted(built - named)}" if built - named else ""]
        hint = (f"; data.test_prompts is one file, so its set is named {sorted(named)[0]!r} after it: write it as "
                f"{{NAME: FILE}} with the name data.build.test uses"
                if isinstance(config.data.test_prompts, str) else "")
        raise PromptFileError("data.build.test and data.test_prompts must name the same sets: "
                              + "; ".join(side for side in sides if side) + hint)
    return build


def output_path(source: str, where: str) -> Path:
    path = Path(source).expanduser()
    if path.suffix.lower() not in (".parquet", ".pq"):
        raise PromptFileError(f"{where} is {source!r}: data build writes Parquet; name a .parquet file")
    return path


def validation_size(config: PipelineConfig) -> int:
    """Training prompts the prompts stage holds out to choose alpha, on top of the train set."""
    return config.train.validation_prompts if config.train.chooses_alpha() else 0


def word_list(path: str | None) -> list[str]:
    """The word filter's words and phrases (match keys; `#` starts a comment)."""
    if path is None:
        return []
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as e:
        raise PromptFileError(f"{path} (data.build.word_filter): cannot read it ({e.strerror})") from None
    words = [match_key(line.split("#", 1)[0]) for line in lines(text)]
    return [w for w in words if w]


def word_filter_record(path: str | None, words: list[str]) -> dict[str, Any] | None:
    return None if path is None else {"path": path, "sha256": sha256(Path(path).expanduser()), "entries": len(words)}


def sha256(path: Path) -> str:
    return digest(path.read_bytes())


def set_table(built: BuiltSet, column: str) -> pa.Table:
    """A built set's rows: the prompt, and the source and row it came from."""
    return pa.table({column: [p.text for p in built.prompts], "source": [p.source for p in built.prompts],
                     "source_row": pa.array([p.row for p in built.prompts], pa.int64())})


def set_record(built: BuiltSet, files: dict[str, bytes], filters: dict[str, Any]) -> bytes:
    """The set's record: sources, filters, counts, the file's sha256 (and for the train set, those
    of the test sets it is disjoint from)."""
    record = {
        "built_by": f"semdpo data build (semdpo {version('semdpo')}, datasets {version('datasets')})",
        "set": built.name, "file": str(built.path), "sha256": digest(files[built.name]), "rows": len(built.prompts),
        "sources": built.sources, "filters": filters, "counts": dict(built.counts),
    }
    if built.name == "train":
        record["disjoint_from"] = {name: digest(data) for name, data in files.items() if name != "train"}
    return (json.dumps(record, indent=2, default=str) + "\n").encode()


def remove_stale_temporaries(paths: Iterable[Path]) -> None:
    """The temporaries a killed build left beside these files (their writer is gone)."""
    for path in paths:
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp") if path.parent.is_dir() else ():
            if temporary_is_stale(stale):
                stale.unlink(missing_ok=True)


def replace_all(outputs: dict[Path, bytes]) -> None:
    """Every file written beside its target first, then each renamed into place: a build that fails
    while writing leaves the old files, not a mix of old and new sets."""
    temporaries: dict[Path, Path] = {}
    try:
        for path, data in outputs.items():
            temporaries[path] = write_temporary(path, data)
        for path, tmp in list(temporaries.items()):
            os.replace(tmp, path)
            del temporaries[path]
        for folder in {path.parent for path in outputs}:
            sync_directory(folder)
    finally:
        for tmp in temporaries.values():
            tmp.unlink(missing_ok=True)


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def record_path(path: Path) -> Path:
    """Where a built file's record lives: NAME.build.json beside NAME.parquet."""
    return path.with_suffix(".build.json")
