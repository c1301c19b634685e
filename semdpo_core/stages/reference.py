"""The reference stage: the SFT model's log-probs of every pair's rewrites, computed once and
stored with the pairs, so that training holds only the policy.

It batches the pairs by `train.batch_size` (padding changes the float sums) under the training's
autocast (`train.precision`), so the stored log-probs are what the policy computes at step 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import torch
from tqdm.auto import tqdm

from semdpo_core.models.inference import loaded
from semdpo_core.models.loading import load_rewriter
from semdpo_core.models.rewriter import concatenated_logps
from semdpo_core.pipeline.stage_context import StageContext
from semdpo_core.preference.optim import mixed_precision
from semdpo_core.stages.pairs import pairs_shard


@dataclass(frozen=True)
class ReferenceLogps:
    """The reference model's log-probs per pair, and the rewrites' token counts."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    kl: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor


def kl_completions(chosen: list[str]) -> list[str]:
    """KTO's mismatched completion of each pair: the next pair's chosen rewrite (wrapping round)."""
    return chosen[1:] + chosen[:1]


@torch.no_grad()
def reference_logps(
    model: object, tokenizer: object, prompts: list[str], chosen: list[str], rejected: list[str], kl: list[str],
    batch_size: int, max_length: int,
) -> ReferenceLogps:
    """log ref(y_w|x), log ref(y_l|x), KTO's log ref(y'|x), and token counts, `batch_size` pairs at a time."""
    model.eval()
    columns: dict[str, list[torch.Tensor]] = {k: [] for k in ("chosen", "rejected", "kl",
                                                              "chosen_tokens", "rejected_tokens")}
    for start in tqdm(range(0, len(prompts), batch_size), desc="reference log-probs", unit="batch"):
        sl = slice(start, start + batch_size)
        out = concatenated_logps(
            model, tokenizer, prompts[sl], {"chosen": chosen[sl], "rejected": rejected[sl], "kl": kl[sl]}, max_length
        )
        (c, n_chosen), (r, n_rejected), (k, _) = out["chosen"], out["rejected"], out["kl"]
        for key, value in zip(columns, (c, r, k, n_chosen, n_rejected)):
            columns[key].append(value.double().cpu())
    return ReferenceLogps(**{k: torch.cat(v) if v else torch.empty(0, dtype=torch.float64) for k, v in columns.items()})


def reference_shard(ctx: StageContext, shard: int) -> pa.Table:
    """The reference log-probs of shard `shard`'s pairs (REFERENCE)."""
    s = ctx.settings
    table = pairs_shard(ctx.store, ctx.inputs["pairs"], shard, s.shard_size)
    chosen = table.column("chosen").to_pylist()
    kl = kl_completions(chosen)  # a shard's last pair wraps within the shard: a fixed, stored choice
    model, tokenizer = loaded(load_rewriter, ctx.checkpoint_dir("sft"), ctx.device, torch.float32)
    autocast, _ = mixed_precision(ctx.device, s.precision)
    with autocast:
        ref = reference_logps(model, tokenizer, table.column("prompt").to_pylist(), chosen,
                              table.column("rejected").to_pylist(), kl, s.batch_size, s.max_length)
    return pa.table(
        {
            "prompt_id": table.column("prompt_id"),
            "reference_chosen_logps": pa.array(ref.chosen.tolist(), pa.float64()),
            "reference_rejected_logps": pa.array(ref.rejected.tolist(), pa.float64()),
            "kl_completion": pa.array(kl, pa.string()),
            "reference_kl_logps": pa.array(ref.kl.tolist(), pa.float64()),
            "chosen_tokens": pa.array(ref.chosen_tokens.long().tolist(), pa.int64()),
            "rejected_tokens": pa.array(ref.rejected_tokens.long().tolist(), pa.int64()),
        }
    )
