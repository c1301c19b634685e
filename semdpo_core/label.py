"""Reward labelling: score every image against its original prompt, then pick chosen/rejected."""

from __future__ import annotations

import logging
from collections import defaultdict

import pyarrow as pa

from semdpo_core.batching import device_memory, map_in_batches
from semdpo_core.schemas import PAIRS
from semdpo_core.scorers import Scorer, decode_png

log = logging.getLogger("semdpo.label")


def score_images(scorer: Scorer, images: list[bytes], prompts: list[str], batch_size: int, desc: str = "score") -> list[float]:
    """The scorer's score of each PNG image against its prompt (batches sized to the GPU's free memory)."""
    return map_in_batches(
        lambda batch: scorer.score([decode_png(b) for b in images[batch]], prompts[batch]), len(images), batch_size,
        desc=desc, unit="image", memory=device_memory(scorer.device),
    )


def select_pairs(candidates: pa.Table, rewards: dict[str, float]) -> pa.Table:
    """Per prompt, chosen = best-rewarded rewrite and rejected = worst; ties make no pair."""
    by_prompt: dict[str, list[tuple[str, str, float]]] = defaultdict(list)  # (candidate id, rewrite, reward)
    texts = {}
    for row in candidates.to_pylist():
        if row["candidate_id"] in rewards:
            by_prompt[row["prompt_id"]].append((row["candidate_id"], row["rewrite"], rewards[row["candidate_id"]]))
            texts[row["prompt_id"]] = row["prompt"]
    rows: dict[str, list] = {name: [] for name in PAIRS.names}
    ties = same_text = too_few = 0
    for pid, options in by_prompt.items():
        if len(options) < 2:
            too_few += 1
            continue
        best = max(options, key=lambda o: o[2])  # first of equal maxima: stable
        worst = min(options, key=lambda o: o[2])
        if best[2] == worst[2]:
            ties += 1
            continue
        if best[1] == worst[1]:
            same_text += 1
            continue
        rows["prompt_id"].append(pid)
        rows["prompt"].append(texts[pid])
        rows["chosen_id"].append(best[0])
        rows["rejected_id"].append(worst[0])
        rows["chosen"].append(best[1])
        rows["rejected"].append(worst[1])
        rows["chosen_reward"].append(best[2])
        rows["rejected_reward"].append(worst[2])
    log.info(
        "%d pairs from %d prompts (%d tied, %d with identical chosen/rejected text, %d with < 2 candidates)",
        len(rows["prompt_id"]), len(by_prompt), ties, same_text, too_few,
    )
    return pa.Table.from_pydict(rows, schema=PAIRS)
