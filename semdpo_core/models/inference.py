"""Models for inference, loaded once per worker process and shared by the shards it runs.

A Ray worker (or the flow's own process) runs many shards of many stages; each loads its
rewriter, Stable Diffusion, scorers and text encoder through `loaded`, so a model is read from
disk once per process, not once per shard. Training frees them first (`release_models`).
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from typing import Any

from semdpo_core.models.batching import release_cached_memory


@functools.lru_cache(maxsize=8)  # a stage uses at most a rewriter, SD, four scorers and the text encoder
def loaded(loader: Callable[..., Any], *args: Any) -> Any:
    """`loader(*args)`, computed once per process for the same loader and (hashable) arguments."""
    return loader(*args)


def release_models() -> None:
    """Free the cached inference models (before training, which needs the memory)."""
    loaded.cache_clear()
    gc.collect()
    release_cached_memory()
