"""Datasets read with Hugging Face `datasets`: a hub id (from the local cache here; downloaded on a
machine with network), a local folder in a hub layout, or a builder ("parquet", "json", "csv")
with data files. A prompt or pairs source names one as `hf:PATH[@REVISION][:SPLIT]`.

What was read is recorded by the builder's hash: for a hub repository, the commit it resolved to.
"""

from __future__ import annotations

import functools
import io
import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

HUB_PREFIX = "hf:"
HUB_SOURCE = re.compile(r"^hf:(?P<path>[^@:]+)(?:@(?P<revision>[^:]+))?(?::(?P<split>[\w.\-\[\]:%]+))?$")


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
        raise DatasetLoadError(f"{source!r}: a dataset source reads hf:OWNER/NAME[@REVISION][:SPLIT], "
                               "for example hf:trl-lib/my-pairs@main:train")
    return HubDataset(match["path"], split=match["split"] or "train", revision=match["revision"])


def load_hub(spec: HubDataset) -> tuple[Any, str | None]:
    """The split as a `datasets.Dataset`, and the builder's hash (a hub repository's commit)."""
    from datasets import load_dataset_builder

    try:
        builder = load_dataset_builder(spec.path, spec.name, data_files=spec.data_files, revision=spec.revision,
                                       **spec.options)
        builder.download_and_prepare()
        return builder.as_dataset(split=spec.split), builder.hash
    except Exception as e:  # datasets raises many kinds; each becomes one line that names the dataset
        raise DatasetLoadError(
            f"{spec}: datasets could not load it ({type(e).__name__}: {e}). A hub id needs network access or "
            "the dataset in the local cache (HF_DATASETS_CACHE); check the id, config name, split and revision"
        ) from None


@functools.lru_cache(maxsize=8)
def hub_source_parquet(source: str) -> bytes:
    """An `hf:` source's rows as Parquet bytes: what prompt files read and their digest hashes."""
    dataset, _ = load_hub(parse_hub_source(source))
    table: pa.Table = dataset.with_format("arrow")[:]
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()
