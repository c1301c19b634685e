"""Preference fine-tuning: one loop for DPO and Sem-DPO, starting from the SFT checkpoint.

The reference model is the SFT model; its log-probs are computed once, up front, so the loop
holds only the policy. Sem-DPO differs from DPO only by the per-pair semantic weight.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from semdpo_core import checkpoints
from semdpo_core.config import TrainConfig
from semdpo_core.losses import dpo_logits, dpo_loss, sem_dpo_loss
from semdpo_core.models import load_rewriter
from semdpo_core.rewriter import encode_pairs, sequence_logps

log = logging.getLogger("semdpo.train")


@dataclass(frozen=True)
class PreferenceData:
    """Training triples (x, y_w, y_l) with their semantic weights (1.0 for plain DPO)."""

    prompts: list[str]
    chosen: list[str]
    rejected: list[str]
    semantic_weight: list[float]

    def __len__(self) -> int:
        return len(self.prompts)


def chosen_rejected_logps(model: Any, tokenizer: Any, data: PreferenceData, idx: list[int], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(y_w|x) and log pi(y_l|x) for the pairs `idx`, in one forward pass."""
    prompts = [data.prompts[i] for i in idx]
    batch = encode_pairs(tokenizer, prompts + prompts, [data.chosen[i] for i in idx] + [data.rejected[i] for i in idx], max_length)
    logps = sequence_logps(model, batch)
    return logps[: len(idx)], logps[len(idx) :]


@torch.no_grad()
def reference_logps(model: Any, tokenizer: Any, data: PreferenceData, batch_size: int, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference model's log-probs of every chosen and rejected rewrite (computed once)."""
    model.eval()
    chosen, rejected = [], []
    for start in tqdm(range(0, len(data), batch_size), desc="reference log-probs", unit="batch"):
        c, r = chosen_rejected_logps(model, tokenizer, data, list(range(start, min(start + batch_size, len(data)))), max_length)
        chosen.append(c.cpu())
        rejected.append(r.cpu())
    return torch.cat(chosen), torch.cat(rejected)


def train_preference(
    policy: Any,
    tokenizer: Any,
    data: PreferenceData,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    *,
    method: str,
    beta: float,
    learning_rate: float,
    batch_size: int,
    epochs: int,
    max_length: int,
    seed: int,
    checkpoint_every: int = 0,
    save_checkpoint: Callable[[int, dict[str, bytes]], None] | None = None,
    resume_from: dict[str, bytes] | None = None,
) -> list[dict[str, float]]:
    """Train `policy` in place with `method` ("dpo" or "sem_dpo"); returns per-step metrics.

    Every `checkpoint_every` steps the full training state goes to `save_checkpoint(step, files)`;
    `resume_from` (such files) continues from that step with the same data order and RNG state.
    """
    if method not in ("dpo", "sem_dpo"):
        raise ValueError(f"unknown preference method {method!r}")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    device = next(policy.parameters()).device
    weights = torch.tensor(data.semantic_weight, dtype=torch.float32)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=learning_rate)
    order = list(range(len(data)))
    history: list[dict[str, float]] = []
    total = epochs * ((len(order) + batch_size - 1) // batch_size)
    resumed = 0
    if resume_from is not None:
        resumed, history = checkpoints.restore(resume_from, policy, optimizer)
        log.info("%s: resuming from the checkpoint at step %d of %d", method, resumed, total)
    policy.train()
    bar = tqdm(total=total, initial=resumed, desc=method, unit="step")
    step = 0
    for _ in range(epochs):
        rng.shuffle(order)  # replayed on resume: the data order does not depend on where we start
        for start in range(0, len(order), batch_size):
            step += 1
            if step <= resumed:
                continue
            idx = order[start : start + batch_size]
            chosen, rejected = chosen_rejected_logps(policy, tokenizer, data, idx, max_length)
            ref_chosen = reference_chosen_logps[idx].to(device)
            ref_rejected = reference_rejected_logps[idx].to(device)
            if method == "sem_dpo":
                w = weights[idx].to(device)
                losses = sem_dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta, w)
            else:
                w = torch.ones(len(idx), device=device)
                losses = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta)
            loss = losses.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            optimizer.step()
            margin = beta * dpo_logits(chosen, rejected, ref_chosen, ref_rejected).detach()
            history.append(
                {
                    "step": len(history),
                    "loss": loss.item(),
                    "reward_margin": margin.mean().item(),
                    "accuracy": (margin > 0).float().mean().item(),
                    "mean_weight": w.mean().item(),
                }
            )
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if save_checkpoint and checkpoint_every and step % checkpoint_every == 0 and step < total:
                save_checkpoint(step, checkpoints.to_files(policy, optimizer, step, history))
    bar.close()
    policy.eval()
    last = history[-1]
    log.info("%s: %d steps, final loss %.4f, reward margin %.4f", method, len(history), last["loss"], last["reward_margin"])
    return history


def train_from_sft(
    sft_checkpoint: str,
    data: PreferenceData,
    method: str,
    settings: TrainConfig,
    device: torch.device,
    seed: int,
    save_checkpoint: Callable[[int, dict[str, bytes]], None] | None = None,
    resume_from: dict[str, bytes] | None = None,
) -> tuple[Any, Any, list[dict[str, float]]]:
    """Reference log-probs from the SFT model, then a policy initialised from it trained with `method`."""
    reference, tokenizer = load_rewriter(sft_checkpoint, device)
    ref_chosen, ref_rejected = reference_logps(reference, tokenizer, data, settings.batch_size, settings.max_length)
    del reference  # training holds only the policy
    policy, tokenizer = load_rewriter(sft_checkpoint, device)
    history = train_preference(
        policy, tokenizer, data, ref_chosen, ref_rejected, method=method, beta=settings.beta,
        learning_rate=settings.learning_rate, batch_size=settings.batch_size, epochs=settings.epochs,
        max_length=settings.max_length, seed=seed, checkpoint_every=settings.checkpoint_every,
        save_checkpoint=save_checkpoint, resume_from=resume_from,
    )
    return policy, tokenizer, history
