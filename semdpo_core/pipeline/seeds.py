"""Stable seeds derived from names, so the same candidate or test prompt always gets the same noise."""

from __future__ import annotations

import hashlib


def derive_seed(base: int, key: str) -> int:
    """A 31-bit seed from the run's seed and a key (a candidate id, a test prompt id)."""
    return int(hashlib.sha256(f"{base}:{key}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF
