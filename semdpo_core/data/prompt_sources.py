"""Prompt sources as rows: the synthetic world's datasets, the built-in demo set, user files
(Parquet, CSV, JSONL, plain text) and datasets that `datasets` loads (`hf:`), and the digest of
their bytes that fingerprints hash.

A file that cannot be read stops the run before any work starts, with an error that names the
file and the line or column.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from semdpo_core.data.hub_datasets import (
    HUB_PREFIX,
    DatasetLoadError,
    hub_source_parquet,
)
from semdpo_core.world.sources import NAMES as WORLD_NAMES
from semdpo_core.world.sources import PREFIX as WORLD_PREFIX
from semdpo_core.world.sources import world_source

DEMO_SETS = ("train_prompts", "test_prompts", "sft_pairs")
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".txt": "text"}


class PromptFileError(ValueError):
    """A prompt file that cannot be used as it is; the message says where and what to fix."""


class PromptFileMissing(PromptFileError):
    """A prompt file that is not there (yet)."""


def field_error(field: str, error: PromptFileError, buildable: bool) -> PromptFileError:
    """`error` naming the config field whose source it is, and for a missing file that `semdpo
    data build` writes (`buildable`: data.build is set), that command."""
    text = str(error) if f"({field})" in str(error) else f"{field}: {error}"
    if buildable and isinstance(error, PromptFileMissing):
        text += "; `semdpo data build CONFIG` writes it from data.build"
    return PromptFileError(text)


@dataclass(frozen=True)
class Record:
    """One row of a source: its fields and where it came from (file:line)."""

    fields: dict[str, str]
    source: str


def source_bytes(source: str) -> tuple[str, bytes, str]:
    """The (display name, raw bytes, format) of a source: `world:NAME`, `demo:NAME`, a dataset
    (`hf:OWNER/NAME[@REVISION][:SPLIT]`, its rows as Parquet) or a file path."""
    if source.startswith(WORLD_PREFIX):
        try:
            data, fmt = world_source(source.removeprefix(WORLD_PREFIX))
        except KeyError:
            raise PromptFileError(f"unknown world dataset {source!r}; choose one of "
                                  f"{', '.join(WORLD_PREFIX + n for n in WORLD_NAMES)}") from None
        return source, data, fmt
    if source.startswith(HUB_PREFIX):
        try:
            return source, hub_source_parquet(source), "parquet"
        except DatasetLoadError as e:
            raise PromptFileError(str(e)) from None
    if source.startswith("demo:"):
        name = source.removeprefix("demo:")
        if name not in DEMO_SETS:
            raise PromptFileError(f"unknown demo set {source!r}; choose one of {', '.join(DEMO_SETS)}")
        suffix = ".jsonl" if name == "sft_pairs" else ".txt"
        data = resources.files("semdpo_core").joinpath(f"data/{name}{suffix}").read_bytes()
        return source, data, FORMATS[suffix]
    path = Path(source).expanduser()
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise PromptFileError(f"{path}: unknown prompt file type {path.suffix!r}; use one of {', '.join(FORMATS)}")
    try:
        return str(path), path.read_bytes(), fmt
    except FileNotFoundError:
        raise PromptFileMissing(f"{path}: prompt file does not exist") from None
    except IsADirectoryError:
        raise PromptFileError(f"{path}: is a directory, not a prompt file; name the file inside it") from None
    except PermissionError:
        raise PromptFileError(f"{path}: no permission to read it") from None


def prompt_id(text: str) -> str:
    """A stable id for a prompt: the same text always gets the same id."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def source_digest(source: str) -> str:
    """sha256 of a source's bytes: part of the prompts fingerprint, so an edited file reruns."""
    return hashlib.sha256(source_bytes(source)[1]).hexdigest()


def read_records(source: str, columns: list[str]) -> list[Record]:
    """Every row of `source` with the string fields `columns`; text files hold one prompt a line."""
    name, data, fmt = source_bytes(source)
    if fmt == "parquet":
        return _read_parquet(name, data, columns)
    text = _decode(name, data)
    if fmt == "text":
        if len(columns) != 1:
            raise PromptFileError(f"{name}: a plain-text file holds one prompt a line; need columns {columns}")
        return [Record({columns[0]: line}, f"{name}:{i}") for i, line in enumerate(lines(text), 1)]
    if fmt == "csv":
        return _read_csv(name, text, columns)
    return _read_jsonl(name, text, columns)


LINE_BREAK = re.compile(r"\r\n|\r|\n")


def lines(text: str) -> list[str]:
    """A file's lines, split on \\n, \\r\\n or \\r only: str.splitlines() also splits on \\x0b, \\x0c,
    \\x1c-\\x1e, \\x85, U+2028 and U+2029, which would make one prompt two and shift every later line."""
    parts = LINE_BREAK.split(text)
    if parts and parts[-1] == "":
        parts.pop()  # the line break that ends the last line
    return parts


def _decode(name: str, data: bytes) -> str:
    """UTF-8 text without a leading byte-order mark (which would become part of the first prompt)."""
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise PromptFileError(f"{name}:{line}: invalid UTF-8 (byte {e.start}); save the file as UTF-8") from None


def _read_csv(name: str, text: str, columns: list[str]) -> list[Record]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise PromptFileError(f"{name}: empty CSV file; the first line must name the columns") from None
    except csv.Error as e:
        raise PromptFileError(f"{name}:1: malformed CSV header ({e})") from None
    missing = [c for c in columns if c not in header]
    if missing:
        raise PromptFileError(f"{name}: missing column(s) {missing}; the header has {header}")
    index = {c: header.index(c) for c in columns}
    records = []
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise PromptFileError(f"{name}:{reader.line_num}: malformed CSV row ({e})") from None
        if not row:
            continue
        if len(row) != len(header):
            raise PromptFileError(
                f"{name}:{reader.line_num}: row has {len(row)} fields, the header has {len(header)}"
            )
        records.append(Record({c: row[i] for c, i in index.items()}, f"{name}:{reader.line_num}"))
    return records


def _read_jsonl(name: str, text: str, columns: list[str]) -> list[Record]:
    records = []
    for line_no, line in enumerate(lines(text), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise PromptFileError(f"{name}:{line_no}: malformed JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(row, dict):
            raise PromptFileError(f"{name}:{line_no}: expected a JSON object, got {type(row).__name__}")
        for c in columns:
            if c not in row:
                raise PromptFileError(f"{name}:{line_no}: missing field {c!r}")
            if not isinstance(row[c], str):
                raise PromptFileError(f"{name}:{line_no}: field {c!r} must be a string, got {type(row[c]).__name__}")
        records.append(Record({c: row[c] for c in columns}, f"{name}:{line_no}"))
    return records


def _read_parquet(name: str, data: bytes, columns: list[str]) -> list[Record]:
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowInvalid, OSError) as e:
        raise PromptFileError(f"{name}: not a readable Parquet file, truncated or corrupt? ({e})") from None
    for c in columns:
        if c not in table.column_names:
            raise PromptFileError(f"{name}: missing column {c!r}; the file has {table.column_names}")
        if not (pa.types.is_string(table.schema.field(c).type) or pa.types.is_large_string(table.schema.field(c).type)):
            raise PromptFileError(f"{name}: column {c!r} has type {table.schema.field(c).type}, expected string")
    values = {c: table.column(c).to_pylist() for c in columns}
    records = []
    for i in range(table.num_rows):
        row = {c: values[c][i] for c in columns}
        null = [c for c, v in row.items() if v is None]
        if null:
            raise PromptFileError(f"{name}: row {i}: column {null[0]!r} is null")
        records.append(Record(row, f"{name}:row {i}"))
    return records
