"""Supervised fine-tuning of the base rewriter on (original, rewrite) pairs: the SFT baseline."""

from __future__ import annotations

import logging
import random
from typing import Any

import torch
from tqdm.auto import tqdm

from semdpo_core.rewriter import completion_nll, encode_pairs
from semdpo_core.train import mixed_precision, optimizer_step

log = logging.getLogger("semdpo.sft")


def train_sft(
    model: Any,
    tokenizer: Any,
    originals: list[str],
    rewrites: list[str],
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    max_length: int,
    seed: int,
    precision: str = "auto",
) -> list[dict[str, float]]:
    """Fit the rewriter to the pairs in place (mixed precision on CUDA); returns the per-step loss log."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    autocast, scaler = mixed_precision(next(model.parameters()).device, precision)
    order = list(range(len(originals)))
    steps_per_epoch = (len(order) + batch_size - 1) // batch_size
    history: list[dict[str, float]] = []
    model.train()
    bar = tqdm(total=epochs * steps_per_epoch, desc="sft", unit="step")
    for epoch in range(epochs):
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = encode_pairs(tokenizer, [originals[i] for i in idx], [rewrites[i] for i in idx], max_length)
            with autocast:
                loss = completion_nll(model, batch)
            optimizer.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler else loss).backward()
            optimizer_step(optimizer, scaler, max_grad_norm=1.0)
            history.append({"step": len(history), "loss": loss.item()})
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    log.info("SFT: %d steps over %d pairs, final loss %.4f", len(history), len(originals), history[-1]["loss"])
    return history
