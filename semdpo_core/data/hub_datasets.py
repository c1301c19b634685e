"""Datasets read with Hugging Face `datasets`: a hub id (from the local cache here; downloaded on a
machine with network), a local folder in a hub layout, or a builder ("parquet", "json", "csv")
with data files. A prompt or pairs source names one as `hf:PATH[@REVISION][:SPLIT]`.

What was read is recorded as the commit a hub repository resolved to and the sha256 of each data
file the builder read (a builder such as "parquet" has no commit: its files' digests pin it).
"""

from __future__ import annotations

import functools
import io
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger("semdpo.data")

HUB_PREFIX = "hf:"
# datasets' split syntax: train, test[:200], train[:10%](pct1_dropremainder)
SPLIT = r"[\w.\-]+(?:\[[^\]]*\](?:\(\w+\))?)?"
HUB_SOURCE = re.compile(rf"^hf:(?P<path>[^@:\s]+)(?:@(?P<revision>[^:\s]+))?(?::(?P<split>{SPLIT}(?:\+{SPLIT})*))?$")


class DatasetLoadError(ValueError):
    """A dataset `datasets` could not load; the message names it and says what to check."""


@dataclass(frozen=True)
class HubDataset:
    """The arguments of one `datasets` load: where, which config, split and revision."""

    path: str
    name: str | None = None
    split: str = "train"
    revision: str | None = None
    data_files: Any = None
    options: dict[str, Any] = field(default_factory=dict)  # builder options, e.g. JSON's `field`

    def __str__(self) -> str:
        shown = self.path + (f"/{self.name}" if self.name else "") + (f"@{self.revision}" if self.revision else "")
        return f"{shown}[{self.split}]" + (f" ({self.data_files})" if self.data_files else "")


def parse_hub_source(source: str) -> HubDataset:
    """`hf:OWNER/NAME[@REVISION][:SPLIT]` (or a local folder in place of OWNER/NAME) as a HubDataset."""
    match = HUB_SOURCE.match(source)
    if not match:
        raise DatasetLoadError(f"{source!r}: a dataset source reads hf:OWNER/NAME[@REVISION][:SPLIT] with no spaces, "
                               "SPLIT a split or datasets' split syntax (test[:200], train+validation); "
                               "for example hf:Gustavosta/Stable-Diffusion-Prompts@main:test")
    return HubDataset(match["path"], split=match["split"] or "train", revision=match["revision"])


def load_hub(spec: HubDataset) -> tuple[Any, dict[str, Any]]:
    """The split as a `datasets.Dataset`, and what it was read from: `resolved`, the commit of a hub
    repository (None for a builder that reads data_files), and `data_file_sha256`, each data file's
    digest, taken by `datasets` when it prepared the dataset from those files and kept with it."""
    from datasets import load_dataset_builder

    check_revision(spec, str(spec))
    check_path(spec)
    try:
        builder = load_dataset_builder(spec.path, spec.name, data_files=spec.data_files, revision=spec.revision,
                                       **spec.options)
        builder._record_checksums = True  # sha256 of every file downloaded, into the prepared dataset's info
        builder.download_and_prepare()
        dataset = builder.as_dataset(split=spec.split)
    except Exception as e:  # datasets raises many kinds; each becomes one line that names the dataset
        raise DatasetLoadError(f"{spec}: datasets could not load it ({type(e).__name__}: {e}); "
                               f"{load_hint(spec)}") from None
    provenance = {"resolved": None if is_builder(spec) else builder.hash,
                  "data_file_sha256": data_file_digests(builder, spec)}
    return dataset, provenance


def data_file_digests(builder: Any, spec: HubDataset) -> dict[str, str] | None:
    """{data file: sha256} as the prepare step recorded them; None for a dataset prepared in the
    cache before they were recorded (a warning says how to have them)."""
    recorded = builder.info.download_checksums or {}
    digests = {name: entry["checksum"] for name, entry in sorted(recorded.items()) if entry.get("checksum")}
    if builder.config.data_files and not digests:
        log.warning("%s: prepared in the datasets cache without its files' sha256; to record them, remove %s "
                    "and run again", spec, builder.cache_dir)
        return None
    return digests


BUILDER_OF_SUFFIX = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".txt": "text"}


def check_path(spec: HubDataset) -> None:
    """Refuse, before `datasets` is asked, the two mistakes its own errors explain worst: a file
    named as the path, and a builder without files."""
    if Path(spec.path).expanduser().is_file():
        builder = BUILDER_OF_SUFFIX.get(Path(spec.path).suffix.lower(), "parquet")
        raise DatasetLoadError(f"{spec}: path names a file; read it with its builder: path: {builder}, "
                               f"data_files: {spec.path}")
    if is_builder(spec) and not spec.data_files:
        raise DatasetLoadError(f"{spec}: the {spec.path} builder reads data_files; name the file(s) to read")


def load_hint(spec: HubDataset) -> str:
    """What to check after a failed load, for the kind of path it was."""
    if is_builder(spec):
        return "check data_files (a relative path is read from the current directory)" + (
            " and `field` (the key holding the rows)" if spec.path == "json" else "")
    folder = Path(spec.path).expanduser()
    if folder.is_dir():
        return "check the folder's layout (data/SPLIT-*.parquet or a loading config), the config name and the split"
    return (f"a hub id needs network access or the dataset in the local cache (HF_DATASETS_CACHE); check the id, "
            f"config name, split and revision (and there is no folder {folder.resolve()} here)")


def is_builder(spec: HubDataset) -> bool:
    """Whether the path names one of datasets' builders ("parquet", "json", ...) rather than a repository."""
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    return spec.path in _PACKAGED_DATASETS_MODULES


def check_revision(spec: HubDataset, where: str) -> None:
    """A revision only pins a repository: for a builder it would be ignored, so it is refused."""
    if spec.revision and is_builder(spec):
        raise DatasetLoadError(
            f"{where}: a revision pins a hub repository, and {spec.path!r} is a builder reading data_files; pin "
            "the files instead (hf://datasets/OWNER/NAME@REVISION/FILE) or drop the revision")


@functools.lru_cache(maxsize=8)
def hub_source_parquet(source: str) -> bytes:
    """An `hf:` source's rows as Parquet bytes: what prompt files read and their digest hashes."""
    dataset, _ = load_hub(parse_hub_source(source))
    table: pa.Table = dataset.with_format("arrow")[:]
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()
