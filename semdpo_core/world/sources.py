"""The world's datasets as prompt sources (`world:NAME`), read like any prompt file.

Each source is generated from the grammar with a fixed seed, so its bytes (and therefore the
prompts stage's fingerprint) never change unless the grammar does. `data.max_train_prompts` and
`data.max_test_prompts` take the first N, as with a file.
"""

from __future__ import annotations

import json
from functools import lru_cache

from semdpo_core.world.grammar import TEST_SETS, sft_pairs, test_sets, train_prompts

PREFIX = "world:"
DATA_SEED = 0  # the world's datasets are fixed: the pipeline's seed moves sampling, not the data
TRAIN_PROMPTS = 4000
TEST_PROMPTS = 200  # per test set
SFT_PAIRS = 4000
NAMES = ("train_prompts", *TEST_SETS, "sft_pairs")


@lru_cache(maxsize=len(NAMES))
def world_source(name: str) -> tuple[bytes, str]:
    """(bytes, format) of the world dataset `name`: prompts one a line, SFT pairs as JSON lines."""
    if name not in NAMES:
        raise KeyError(name)
    if name == "sft_pairs":
        lines = [json.dumps({"original": o, "rewrite": r}) for o, r in sft_pairs(SFT_PAIRS, DATA_SEED)]
        return ("\n".join(lines) + "\n").encode(), "jsonl"
    prompts = (train_prompts(TRAIN_PROMPTS, DATA_SEED) if name == "train_prompts"
               else test_sets(TEST_PROMPTS, DATA_SEED)[name])
    return ("\n".join(prompts) + "\n").encode(), "text"
