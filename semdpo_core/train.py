"""Preference fine-tuning: one loop for every method, starting from the SFT checkpoint.

The reference model is the SFT model. Its log-probs are computed once per pair by the
reference stage and stored with the pairs, so this loop holds only the policy. Methods differ
only in the per-pair loss (semdpo_core/losses.py); Sem-DPO's weights W = exp(-alpha * d) are
computed once, before the loop, from the stored semantic distances.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from semdpo_core import checkpoints
from semdpo_core.config import TrainConfig
from semdpo_core.losses import (
    BetaDPO, additive_loss, dpo_logits, dpo_loss, hard_filter_loss, ipo_loss, kto_kl, kto_loss, orpo_loss, sem_dpo_loss, semantic_weight,
)
from semdpo_core.models import load_rewriter
from semdpo_core.rewriter import encode_pairs, sequence_logps

log = logging.getLogger("semdpo.train")


@dataclass(frozen=True)
class PreferenceData:
    """Training triples (x, y_w, y_l) with the semantic distance d(x, y_w) of each."""

    prompts: list[str]
    chosen: list[str]
    rejected: list[str]
    semantic_distance: list[float]
    kl_completion: list[str] | None = None  # as stored by the reference stage
    fidelity_margin: list[float] | None = None  # f(y_w) - f(y_l), for the additive baseline

    def __len__(self) -> int:
        return len(self.prompts)

    def kl_completions(self) -> list[str]:
        """KTO's mismatched completion of each pair: the stored one, else the next pair's chosen rewrite."""
        return self.kl_completion if self.kl_completion is not None else self.chosen[1:] + self.chosen[:1]


@dataclass(frozen=True)
class ReferenceLogps:
    """The reference model's log-probs per pair, and the rewrites' token counts."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    kl: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor


def completion_logps(model: Any, tokenizer: Any, prompts: list[str], completions: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(y|x) of each (prompt, completion) and the completion's token count."""
    batch = encode_pairs(tokenizer, prompts, completions, max_length)
    return sequence_logps(model, batch), batch["completion_mask"].sum(-1).to(torch.float64)


def concatenated_logps(
    model: Any, tokenizer: Any, prompts: list[str], completions: dict[str, list[str]], max_length: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """completion_logps of every completion set (chosen, rejected, ...) in one forward pass, as TRL
    does: one batch of 2B sequences keeps the GPU busier than two batches of B."""
    logps, tokens = completion_logps(
        model, tokenizer, prompts * len(completions), [c for texts in completions.values() for c in texts], max_length
    )
    n = len(prompts)
    return {name: (logps[i * n : (i + 1) * n], tokens[i * n : (i + 1) * n]) for i, name in enumerate(completions)}


@torch.no_grad()
def reference_logps(model: Any, tokenizer: Any, data: PreferenceData, batch_size: int, max_length: int) -> ReferenceLogps:
    """The reference stage: log ref(y_w|x), log ref(y_l|x), KTO's log ref(y'|x), and token counts."""
    model.eval()
    columns: dict[str, list[torch.Tensor]] = {k: [] for k in ("chosen", "rejected", "kl", "chosen_tokens", "rejected_tokens")}
    kl_completions = data.kl_completions()
    for start in tqdm(range(0, len(data), batch_size), desc="reference log-probs", unit="batch"):
        sl = slice(start, start + batch_size)
        prompts = data.prompts[sl]
        out = concatenated_logps(
            model, tokenizer, prompts, {"chosen": data.chosen[sl], "rejected": data.rejected[sl], "kl": kl_completions[sl]},
            max_length,
        )
        (chosen, n_chosen), (rejected, n_rejected), (kl, _) = out["chosen"], out["rejected"], out["kl"]
        for key, value in zip(columns, (chosen, rejected, kl, n_chosen, n_rejected)):
            columns[key].append(value.double().cpu())
    return ReferenceLogps(**{k: torch.cat(v) if v else torch.empty(0, dtype=torch.float64) for k, v in columns.items()})


def warmup_then_linear_decay(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate rises linearly over the warmup, then falls linearly to zero."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def mixed_precision(device: torch.device, precision: str) -> tuple[contextlib.AbstractContextManager, torch.amp.GradScaler | None]:
    """auto: bf16 autocast on CUDA where supported (fp16 with loss scaling otherwise), fp32 on
    CPU; bf16 or fp16 asked for by name run on either device."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return contextlib.nullcontext(), None
    use_bf16 = precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported())
    dtype = torch.bfloat16 if use_bf16 else torch.float16
    return torch.autocast(device.type, dtype=dtype), (None if use_bf16 else torch.amp.GradScaler(device.type))


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, max_grad_norm: float) -> None:
    """Clip the gradients and step; with fp16 loss scaling, unscale first and skip overflowed steps."""
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    if scaler:
        scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


class PairLoss:
    """The per-pair loss of one method, with its settings and state (beta-DPO's moving averages)."""

    def __init__(self, method: str, settings: TrainConfig, alpha: float | None, seed: int, fidelity_scale: float = 1.0):
        self.method, self.settings, self.alpha, self.fidelity_scale = method, settings, alpha, fidelity_scale
        b = settings.beta_dpo
        self.beta_dpo = BetaDPO(settings.beta, b.alpha, b.rho, b.momentum, generator=torch.Generator().manual_seed(seed))

    def __call__(
        self, policy: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], distance: torch.Tensor, fidelity: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(per-pair losses, per-pair weights, beta used)."""
        s, beta = self.settings, self.settings.beta
        pc, pr = policy["chosen"], policy["rejected"]
        ones = torch.ones_like(pc)
        if self.method == "orpo":
            return orpo_loss(pc, pr, policy["chosen_tokens"], policy["rejected_tokens"], s.orpo.orpo_lambda), ones, beta
        rc, rr = ref["chosen"], ref["rejected"]
        if self.method == "dpo":
            return dpo_loss(pc, pr, rc, rr, beta), ones, beta
        if self.method == "sem_dpo":
            w = semantic_weight(distance, self.alpha).to(pc.dtype)
            return sem_dpo_loss(pc, pr, rc, rr, beta, w), w, beta
        if self.method == "hard_filter":
            keep = (distance <= s.hard_filter.tau).to(pc.dtype)
            return hard_filter_loss(pc, pr, rc, rr, beta, distance, s.hard_filter.tau), keep, beta
        if self.method == "ipo":
            return ipo_loss(pc, pr, rc, rr, beta, ref["chosen_tokens"], ref["rejected_tokens"]), ones, beta
        if self.method == "kto":
            kl = kto_kl(policy["kl"], ref["kl"])
            return kto_loss(pc, pr, rc, rr, beta, kl, s.kto.desirable_weight, s.kto.undesirable_weight), ones, beta
        if self.method == "additive":
            margin = (fidelity / self.fidelity_scale).to(pc.dtype)
            return additive_loss(pc, pr, rc, rr, beta, margin, s.additive.coefficient), ones, beta
        if self.method == "beta_dpo":
            losses, kept, used = self.beta_dpo.loss(pc, pr, rc, rr)
            return losses, kept, used
        raise ValueError(f"unknown preference method {self.method!r}")

    def state(self) -> dict[str, Any]:
        return {"m0": self.beta_dpo.m0, "sigma": self.beta_dpo.sigma, "generator": self.beta_dpo.generator.get_state()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.beta_dpo.m0, self.beta_dpo.sigma = state["m0"], state["sigma"]
        self.beta_dpo.generator.set_state(state["generator"])


def report_weights(method: str, distances: torch.Tensor, alpha: float | None, tau: float) -> None:
    """Log how much of the data a semantic method keeps; warn when it keeps (almost) nothing."""
    if method == "sem_dpo":
        weights = semantic_weight(distances, alpha)
    elif method == "hard_filter":
        weights = (distances <= tau).double()
    else:
        return
    effective = weights.sum().item()
    log.info("%s: %d pairs, mean weight %.3f, effective pairs %.1f (distance median %.3f)",
             method, len(weights), weights.mean().item(), effective, distances.median().item())
    if effective < 0.01 * len(weights):
        fix = "raise train.hard_filter.tau" if method == "hard_filter" else "lower train.alpha"
        log.warning("%s keeps under 1%% of the pairs' weight: %s", method, fix)


def train_preference(
    policy: Any,
    tokenizer: Any,
    data: PreferenceData,
    reference: ReferenceLogps | None,
    *,
    method: str,
    settings: TrainConfig,
    alpha: float | None = None,
    seed: int = 0,
    save_checkpoint: Callable[[int, dict[str, bytes]], None] | None = None,
    resume_from: dict[str, bytes] | None = None,
    on_step: Callable[[dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train `policy` in place with `method`; returns per-optimizer-step metrics (`on_step` sees each).

    Every `settings.checkpoint_every` steps the full training state goes to
    `save_checkpoint(step, files)`; `resume_from` (such files) continues from that step with the
    same data order, learning rate and RNG state, ending where an uninterrupted run ends.
    """
    if method != "orpo" and reference is None:
        raise ValueError(f"{method} needs the reference log-probs of the pairs")
    if method == "additive" and data.fidelity_margin is None:
        raise ValueError("the additive baseline needs each pair's fidelity margin (the fidelity stage)")
    s = settings
    rng = random.Random(seed)
    torch.manual_seed(seed)
    device = next(policy.parameters()).device
    fidelity = torch.tensor(data.fidelity_margin or [0.0] * len(data), dtype=torch.float64)
    fidelity_scale = fidelity.std().item() if len(data) > 1 and fidelity.std().item() > 0 else 1.0
    loss_fn = PairLoss(method, s, alpha, seed, fidelity_scale)
    distances = torch.tensor(data.semantic_distance, dtype=torch.float64)
    report_weights(method, distances, alpha, s.hard_filter.tau)
    kl_completions = data.kl_completions()
    micro_batches = math.ceil(len(data) / s.batch_size)
    steps_per_epoch = math.ceil(micro_batches / s.gradient_accumulation_steps)
    total = s.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(policy.parameters(), lr=s.learning_rate)
    scheduler = warmup_then_linear_decay(optimizer, int(s.warmup_ratio * total), total)
    autocast, scaler = mixed_precision(device, s.precision)
    history: list[dict[str, float]] = []
    resumed = 0
    if resume_from is not None:
        resumed, history, extra = checkpoints.restore(resume_from, policy, optimizer)
        scheduler.load_state_dict(extra["scheduler"])
        loss_fn.load_state(extra["loss"])
        log.info("%s: resuming from the checkpoint at step %d of %d", method, resumed, total)
    policy.train()
    bar = tqdm(total=total, initial=resumed, desc=method, unit="step")
    order = list(range(len(data)))
    step = 0
    for _ in range(s.epochs):
        rng.shuffle(order)  # replayed on resume: the data order does not depend on where we start
        batches = [order[i : i + s.batch_size] for i in range(0, len(order), s.batch_size)]
        for first in range(0, len(batches), s.gradient_accumulation_steps):
            step += 1
            if step <= resumed:
                continue
            group = batches[first : first + s.gradient_accumulation_steps]
            stats = {"loss": 0.0, "margin": [], "weight": [], "beta": 0.0}
            for idx in group:
                prompts = [data.prompts[i] for i in idx]
                completions = {"chosen": [data.chosen[i] for i in idx], "rejected": [data.rejected[i] for i in idx]}
                if method == "kto":
                    completions["kl"] = [kl_completions[i] for i in idx]
                with autocast:
                    out = concatenated_logps(policy, tokenizer, prompts, completions, s.max_length)
                    (pc, nc), (pr, nr) = out["chosen"], out["rejected"]
                    pol = {"chosen": pc, "rejected": pr, "chosen_tokens": nc.to(device), "rejected_tokens": nr.to(device)}
                    if method == "kto":
                        pol["kl"] = out["kl"][0].detach()
                ref = {} if reference is None else {
                    k: getattr(reference, k)[idx].to(device) for k in ("chosen", "rejected", "kl", "chosen_tokens", "rejected_tokens")
                }
                losses, weights, beta = loss_fn(pol, ref, distances[idx].to(device), fidelity[idx].to(device))
                loss = losses.mean() / len(group)
                (scaler.scale(loss) if scaler else loss).backward()
                margin = dpo_logits(pc, pr, ref["chosen"], ref["rejected"]) if ref else dpo_logits(pc, pr, 0 * pc, 0 * pr)
                stats["loss"] += loss.item()
                stats["margin"].append(margin.detach().double().cpu())
                stats["weight"].append(weights.detach().double().cpu())
                stats["beta"] = beta
            lr = scheduler.get_last_lr()[0]
            optimizer_step(optimizer, scaler, s.max_grad_norm)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            margin, weight = torch.cat(stats["margin"]), torch.cat(stats["weight"])
            history.append(
                {
                    "step": len(history), "loss": stats["loss"], "reward_margin": s.beta * margin.mean().item(),
                    "accuracy": (margin > 0).double().mean().item(), "mean_weight": weight.mean().item(),
                    "effective_batch": weight.sum().item(), "beta": float(stats["beta"]), "learning_rate": lr,
                }
            )
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.4f}")
            if on_step:
                on_step(history[-1])
            if save_checkpoint and s.checkpoint_every and step % s.checkpoint_every == 0 and step < total:
                extra = {"scheduler": scheduler.state_dict(), "loss": loss_fn.state()}
                save_checkpoint(step, checkpoints.to_files(policy, optimizer, step, history, extra))
    bar.close()
    policy.eval()
    last = history[-1]
    log.info("%s: %d steps, final loss %.4f, reward margin %.4f, mean weight %.3f",
             method, len(history), last["loss"], last["reward_margin"], last["mean_weight"])
    return history


def train_from_sft(
    sft_checkpoint: str,
    data: PreferenceData,
    reference: ReferenceLogps | None,
    method: str,
    settings: TrainConfig,
    device: torch.device,
    alpha: float | None = None,
    seed: int = 0,
    save_checkpoint: Callable[[int, dict[str, bytes]], None] | None = None,
    resume_from: dict[str, bytes] | None = None,
) -> tuple[Any, Any, list[dict[str, float]]]:
    """A policy initialised from the SFT checkpoint, trained with `method` on the pairs."""
    policy, tokenizer = load_rewriter(sft_checkpoint, device)
    history = train_preference(
        policy, tokenizer, data, reference, method=method, settings=settings, alpha=alpha, seed=seed,
        save_checkpoint=save_checkpoint, resume_from=resume_from,
    )
    return policy, tokenizer, history
