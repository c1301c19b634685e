"""Batches that fit the accelerator: the configured batch size is the ceiling, memory sets the rest.

A stage asks for `batch_size` items at a time; when CUDA runs out of memory on a batch, the
batch is halved and retried, and the smaller size is kept for the rest of the stage (the first
batches find what fits in the free memory; later ones do not probe again). Only stages whose
results do not depend on how the items are grouped (beyond float rounding) use it: rendering
(one seed per image) and scoring. Candidate sampling draws from one random stream per batch,
so its batch size is part of its result and is never changed behind the user's back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from tqdm.auto import tqdm

log = logging.getLogger("semdpo.batching")

T = TypeVar("T")


def map_in_batches(
    step: Callable[[slice], Sequence[T]], total: int, batch_size: int, *, desc: str, unit: str = "item"
) -> list[T]:
    """step(slice) for consecutive slices of range(total), concatenated; halves the batch on CUDA OOM."""
    results: list[T] = []
    start, size = 0, batch_size
    with tqdm(total=total, desc=desc, unit=unit) as progress:
        while start < total:
            stop = min(start + size, total)
            try:
                out = step(slice(start, stop))
            except torch.OutOfMemoryError as error:
                if stop - start == 1:
                    raise RuntimeError(
                        f"{desc}: out of GPU memory with a batch of 1; free the GPU (other processes, "
                        f"a larger model) or use a smaller image size"
                    ) from error
                size = max(1, (stop - start) // 2)
                log.warning("%s: out of GPU memory with a batch of %d; continuing with %d (set the stage's "
                            "batch_size to %d to skip this probe)", desc, stop - start, size, size)
                release_cached_memory()
                continue
            if len(out) != stop - start:
                raise RuntimeError(f"{desc}: a batch of {stop - start} items gave {len(out)} results")
            results.extend(out)
            progress.update(stop - start)
            start = stop
    return results


def release_cached_memory() -> None:
    """Hand CUDA's cached blocks back (before a smaller retry, or after freeing models)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
