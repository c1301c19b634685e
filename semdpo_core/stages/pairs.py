"""The pairs stage: per training prompt, the best-rewarded candidate is chosen and the worst
rejected; and the rows of one shard of the pairs, which the weigh and reference stages split."""

from __future__ import annotations

import logging
from collections import defaultdict

import pyarrow as pa

from semdpo_core.data.prompt_sources import PromptFileError, prompt_id, read_records
from semdpo_core.pipeline.schemas import CANDIDATES, PAIRS, REWARDS
from semdpo_core.pipeline.stage_context import Output, StageContext
from semdpo_core.store.artifact_store import ArtifactStore, DatasetRef

log = logging.getLogger("semdpo.pairs")


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


def own_pairs_table(source: str) -> pa.Table:
    """The user's pairs (prompt, chosen, rejected) as PAIRS, in file order: ids from the prompt and
    the row, no rewards. Rows whose chosen and rejected are the same text carry no preference and
    are dropped (counted); an empty field is refused with its file:line."""
    rows: dict[str, list] = {name: [] for name in PAIRS.names}
    same = 0
    for i, record in enumerate(read_records(source, ["prompt", "chosen", "rejected"])):
        prompt, chosen, rejected = (" ".join(record.fields[c].split()) for c in ("prompt", "chosen", "rejected"))
        empty = [c for c, v in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)) if not v]
        if empty:
            raise PromptFileError(f"{record.source}: empty {empty[0]!r}; "
                                  "every pair needs a prompt, chosen and rejected")
        if chosen == rejected:
            same += 1
            continue
        pid = prompt_id(prompt)
        for name, value in (("prompt_id", pid), ("prompt", prompt), ("chosen_id", f"{pid}-{i}-chosen"),
                            ("rejected_id", f"{pid}-{i}-rejected"), ("chosen", chosen), ("rejected", rejected),
                            ("chosen_reward", None), ("rejected_reward", None)):
            rows[name].append(value)
    log.info("%s: %d pairs (%d with identical chosen and rejected dropped)", source, len(rows["prompt_id"]), same)
    if not rows["prompt_id"]:
        raise PromptFileError(f"{source} (data.preference_pairs): no pair with different chosen and rejected text")
    return pa.Table.from_pydict(rows, schema=PAIRS)


def pairs_stage(ctx: StageContext) -> Output:
    """The PAIRS table from the candidates and their rewards, or from the user's own pairs."""
    if "preference_pairs" in ctx.settings:
        return Output(own_pairs_table(ctx.settings.preference_pairs.path))
    table = ctx.store.read_table(ctx.inputs["label"], REWARDS)
    rewards = dict(zip(table.column("candidate_id").to_pylist(), table.column("reward").to_pylist()))
    out = select_pairs(ctx.store.read_table(ctx.inputs["candidates"], CANDIDATES), rewards)
    if out.num_rows == 0:
        raise ValueError("no preference pairs: every prompt's candidates tied; raise candidates.num_candidates")
    return Output(out)


def pairs_shard(store: ArtifactStore, pairs: DatasetRef, shard: int, shard_size: int) -> pa.Table:
    """Shard `shard`'s pairs: rows [shard * shard_size, (shard + 1) * shard_size) of the pairs table."""
    return store.read_rows(pairs, PAIRS, shard * shard_size, shard_size)
