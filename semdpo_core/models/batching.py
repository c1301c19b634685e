"""Batches that fit the accelerator: the configured batch size is the ceiling, memory sets the rest.

A stage asks for `batch_size` items at a time. On CUDA the first item runs alone while its peak
memory is measured, and the batch is sized from that and the GPU's free memory (never above the
ceiling). Should a batch still run out of memory, it is halved and retried, and the smaller size
is kept for the rest of the stage. Only stages whose results do not depend on how the items are
grouped (beyond float rounding) use it: rendering (one seed per image) and scoring. Candidate
sampling draws from one random stream per batch, so its batch size is part of its result and is
never changed behind the user's back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import torch
from tqdm.auto import tqdm

log = logging.getLogger("semdpo.batching")

T = TypeVar("T")
GiB = 2**30
HEADROOM = 0.9  # of the free memory a batch may take: allocator fragmentation and other processes


class DeviceMemory(Protocol):
    """What batch sizing reads from an accelerator: its free memory and a step's peak use."""

    def free_bytes(self) -> int: ...
    def start_peak(self) -> None: ...
    def peak_bytes(self) -> int: ...


class CudaMemory:
    """DeviceMemory of one CUDA device, from PyTorch's caching allocator and the driver."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.baseline = 0

    def free_bytes(self) -> int:
        """The driver's free memory plus blocks PyTorch holds cached but unused (reusable at once)."""
        free, _ = torch.cuda.mem_get_info(self.device)
        return free + torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)

    def start_peak(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.baseline = torch.cuda.memory_allocated(self.device)

    def peak_bytes(self) -> int:
        """Peak allocation above what was held when start_peak ran: what the step itself needed."""
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) - self.baseline


def device_memory(device: torch.device | str) -> DeviceMemory | None:
    """The memory meter batch sizing uses on `device`; None off CUDA, where memory sets no batch size."""
    device = torch.device(device)
    return CudaMemory(device) if device.type == "cuda" else None


def fitting_batch_size(per_item_bytes: int, free_bytes: int, ceiling: int) -> int:
    """How many items fit in HEADROOM of the free memory at `per_item_bytes` each, within [1, ceiling]."""
    if per_item_bytes <= 0:
        return ceiling
    return max(1, min(ceiling, int(free_bytes * HEADROOM) // per_item_bytes))


def map_in_batches(
    step: Callable[[slice], Sequence[T]],
    total: int,
    batch_size: int,
    *,
    desc: str,
    unit: str = "item",
    memory: DeviceMemory | None = None,
) -> list[T]:
    """step(slice) for consecutive slices of range(total), concatenated. With a `memory` meter the
    batch is sized from the first item's peak memory; on CUDA out-of-memory a batch is halved."""
    results: list[T] = []
    start, size = 0, batch_size
    measure = memory is not None and batch_size > 1 and total > 1
    with tqdm(total=total, desc=desc, unit=unit) as progress:
        while start < total:
            stop = min(start + (1 if measure else size), total)
            try:
                if measure:
                    memory.start_peak()
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
            if measure:
                measure = False
                per_item, free = memory.peak_bytes(), memory.free_bytes()
                size = fitting_batch_size(per_item, free, batch_size)
                log.info("%s: one %s takes %.2f GiB of GPU memory at its peak, %.1f GiB is free: batches of %d "
                         "(batch_size %d is the ceiling)", desc, unit, per_item / GiB, free / GiB, size, batch_size)
            results.extend(out)
            progress.update(stop - start)
            start = stop
    return results


def release_cached_memory() -> None:
    """Hand CUDA's cached blocks back (before a smaller retry, or after freeing models)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
