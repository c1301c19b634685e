"""Datasets read with Hugging Face `datasets`: a hub id (from the local cache here; downloaded on a
machine with network), a local folder in a hub layout, or a builder ("parquet", "json", "csv")
with data files. A prompt or pairs source names one as `hf:PATH[@REVISION][:SPLIT]`.

What was read is recorded as the commit a hub repository resolved to and the sha256 of each data
file the builder read (a builder such as "parquet" has no commit: its files' digests pin it).
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

HUB_PREFIX = "hf:"
SPLIT = r"[\w.\-]+(?:\[[^\]]*\])?"  # a split of datasets' split syntax: train, test[:200], train[10%:]
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
                               "for example hf:trl-lib/my-pairs@main:train")
    return HubDataset(match["path"], split=match["split"] or "train", revision=match["revision"])


def load_hub(spec: HubDataset) -> tuple[Any, dict[str, Any]]:
    """The split as a `datasets.Dataset`, and what it was read from: `resolved`, the commit of a hub
    repository (None for a builder that reads data_files), and `data_file_sha256`, each file's digest."""
    from datasets import load_dataset_builder

    check_revision(spec, str(spec))
    try:
        builder = load_dataset_builder(spec.path, spec.name, data_files=spec.data_files, revision=spec.revision,
                                       **spec.options)
        builder.download_and_prepare()
        dataset = builder.as_dataset(split=spec.split)
        files = data_file_digests(builder)
    except Exception as e:  # datasets raises many kinds; each becomes one line that names the dataset
        raise DatasetLoadError(
            f"{spec}: datasets could not load it ({type(e).__name__}: {e}). A hub id needs network access or "
            "the dataset in the local cache (HF_DATASETS_CACHE); check the id, config name, split and revision"
        ) from None
    return dataset, {"resolved": None if is_builder(spec) else builder.hash, "data_file_sha256": files}


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


def data_file_digests(builder: Any) -> dict[str, str]:
    """sha256 of each data file the builder read, by the name it resolved to (a local path, or a URL
    whose local copy `datasets` keeps in its cache)."""
    names = sorted({str(f) for files in (builder.config.data_files or {}).values() for f in files})
    local = builder.dl_manager.download(names) if names else []
    return {name: file_sha256(path) for name, path in zip(names, local, strict=True)}


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=8)
def hub_source_parquet(source: str) -> bytes:
    """An `hf:` source's rows as Parquet bytes: what prompt files read and their digest hashes."""
    dataset, _ = load_hub(parse_hub_source(source))
    table: pa.Table = dataset.with_format("arrow")[:]
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()
