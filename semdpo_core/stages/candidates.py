"""The candidates stage: k rewrites per training prompt, sampled from the SFT rewriter, shard by shard."""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import torch
from tqdm.auto import tqdm

from semdpo_core.models.inference import loaded
from semdpo_core.models.loading import generation_dtype, load_rewriter
from semdpo_core.models.rewriter import generate
from semdpo_core.pipeline.schemas import CANDIDATES, PROMPTS
from semdpo_core.pipeline.seeds import derive_seed
from semdpo_core.pipeline.stage_context import StageContext
from semdpo_core.world.drift import INJECTED_SUFFIX, drifted, is_dosed

log = logging.getLogger("semdpo.candidates")


def sample_candidates(
    model: Any,
    tokenizer: Any,
    prompt_ids: list[str],
    prompts: list[str],
    *,
    num_candidates: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    shard: int = 0,
    render_seed: str = "per_prompt",
) -> pa.Table:
    """A CANDIDATES table: one row per non-empty sampled rewrite, each with its render seed (the
    prompt's, shared by its candidates, or `per_candidate` one each)."""
    rows: dict[str, list] = {name: [] for name in CANDIDATES.names}
    empty = 0
    for start in tqdm(range(0, len(prompts), batch_size), desc="candidates", unit="batch"):
        batch_ids, batch_prompts = prompt_ids[start : start + batch_size], prompts[start : start + batch_size]
        try:
            rewrites = generate(
                model, tokenizer, batch_prompts, num_return_sequences=num_candidates, do_sample=True,
                temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                seed=derive_seed(seed, f"candidates:{shard}:{start}"),
            )
        except torch.OutOfMemoryError as error:  # the batch seeds the sampling: never resized silently
            raise RuntimeError(
                f"candidates: out of GPU memory sampling {len(batch_prompts)} prompts x {num_candidates} rewrites; "
                f"set candidates.batch_size below {batch_size} (it is part of the sampling seed, so the "
                f"stage does not lower it by itself)"
            ) from error
        for pid, prompt, options in zip(batch_ids, batch_prompts, rewrites, strict=True):
            for j, rewrite in enumerate(options):
                if not rewrite:
                    empty += 1
                    continue
                candidate_id = f"{pid}-{j}"
                rows["candidate_id"].append(candidate_id)
                rows["prompt_id"].append(pid)
                rows["prompt"].append(prompt)
                rows["rewrite"].append(rewrite)
                rows["seed"].append(derive_seed(seed, f"render:{pid if render_seed == 'per_prompt' else candidate_id}"))
    log.info("%d candidates for %d prompts (%d empty rewrites dropped)", len(rows["candidate_id"]), len(prompts), empty)
    return pa.Table.from_pydict(rows, schema=CANDIDATES)


def inject_drift(table: pa.Table, kind: str, share: float, seed: int) -> pa.Table:
    """The candidates with, for each prompt dosed at `share`, one more candidate whose setting is
    moved (`semdpo_core.world.drift`), rendered from the prompt's seed; it follows the prompt's own."""
    if share == 0:
        return table
    by_prompt: dict[str, list[dict[str, Any]]] = {}
    for row in table.to_pylist():
        by_prompt.setdefault(row["prompt_id"], []).append(row)
    out, dosed, missed = [], 0, 0
    for pid, rows in by_prompt.items():
        out += rows
        if not is_dosed(seed, pid, share):
            continue
        dosed += 1
        made = drifted(pid, rows[0]["prompt"], [r["rewrite"] for r in rows], kind, seed)
        if made is None:
            missed += 1
            continue
        out.append(dict(candidate_id=pid + INJECTED_SUFFIX, prompt_id=pid, prompt=rows[0]["prompt"],
                        rewrite=made.rewrite, seed=derive_seed(seed, f"render:{pid}")))
    log.info("candidates.inject (%s, share %g): %d of %d prompts dosed, %d with a content-changing candidate "
             "(%d: no setting, or no sample keeping the prompt's content)", kind, share, dosed, len(by_prompt),
             dosed - missed, missed)
    return pa.Table.from_pylist(out, schema=CANDIDATES)


def train_prompts(ctx: StageContext) -> pa.Table:
    """The training prompts of the prompts stage's table, in order."""
    table = ctx.store.read_table(ctx.inputs["prompts"], PROMPTS)
    return table.filter(pc.equal(table.column("split"), "train"))


def candidates_shard(ctx: StageContext, shard: int) -> pa.Table:
    """Shard `shard`'s training prompts, each with k sampled rewrites (half precision on CUDA)."""
    s = ctx.settings
    rows = train_prompts(ctx).slice(shard * s.shard_size, s.shard_size)
    model, tokenizer = loaded(load_rewriter, ctx.checkpoint_dir("sft"), ctx.device, generation_dtype(ctx.device))
    c = s.candidates
    table = sample_candidates(
        model, tokenizer, rows.column("prompt_id").to_pylist(), rows.column("prompt").to_pylist(),
        num_candidates=c.num_candidates, temperature=c.temperature, top_p=c.top_p,
        max_new_tokens=c.max_new_tokens, batch_size=c.batch_size, seed=s.seed, shard=shard,
        render_seed=c.render_seed,
    )
    if "inject" not in c:  # no dose (the setting is hashed only when set)
        return table
    return inject_drift(table, c.inject.kind, c.inject.share, s.seed)
