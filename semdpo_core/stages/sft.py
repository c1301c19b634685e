"""The SFT stage: supervised fine-tuning of the base rewriter on (original, rewrite) pairs (the SFT
baseline), checked on held-out pairs for rewrites that keep the prompt and stop by themselves."""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import torch
from tqdm.auto import tqdm

from semdpo_core.data.prompt_sources import read_records
from semdpo_core.models.loading import load_rewriter
from semdpo_core.models.rewriter import (
    completion_nll,
    encode_pairs,
    generate_with_stops,
)
from semdpo_core.pipeline.schemas import SFT_LOG
from semdpo_core.pipeline.stage_context import Output, StageContext
from semdpo_core.preference.checkpoints import pretrained_files
from semdpo_core.preference.optim import (
    mixed_precision,
    optimizer_step,
    warmup_then_linear_decay,
)
from semdpo_core.world.grammar import content_words as world_content_words
from semdpo_core.world.sources import PREFIX as WORLD_PREFIX

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
    lr_schedule: str = "linear",
) -> list[dict[str, float]]:
    """Fit the rewriter to the pairs in place (mixed precision on CUDA); returns the per-step loss log.
    `lr_schedule` "linear": 5% warmup, then linear decay to 0 (the Hugging Face Trainer's default
    shape), so the last epochs settle instead of bouncing; "constant": the rate throughout."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    autocast, scaler = mixed_precision(next(model.parameters()).device, precision)
    order = list(range(len(originals)))
    steps_per_epoch = (len(order) + batch_size - 1) // batch_size
    total = epochs * steps_per_epoch
    scheduler = warmup_then_linear_decay(optimizer, int(0.05 * total), total) if lr_schedule == "linear" else None
    history: list[dict[str, float]] = []
    model.train()
    bar = tqdm(total=total, desc="sft", unit="step")
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
            if scheduler is not None:
                scheduler.step()
            history.append({"step": len(history), "loss": loss.item()})
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    log.info("SFT: %d steps over %d pairs, final loss %.4f", len(history), len(originals), history[-1]["loss"])
    return history


STOPWORDS = frozenset("a an the of in on at by to and with for from over under near next beside into its".split())
CONTENT_TARGET, STOP_TARGET = 0.90, 0.95  # issue 12: an SFT rewriter that keeps the prompt and stops by itself


def plain_content_words(text: str) -> frozenset[str]:
    """The words of a prompt that carry content: lower-cased, punctuation and stopwords removed."""
    return frozenset(re.findall(r"[a-z0-9]+", text.lower())) - STOPWORDS


def held_out_share(num_pairs: int, check_pairs: int) -> int:
    """How many SFT pairs (the last ones) stay out of training to check the rewriter: at most a tenth."""
    return min(check_pairs, num_pairs // 10)


def check_rewrites(
    model: Any,
    tokenizer: Any,
    originals: list[str],
    *,
    content_words: Callable[[str], frozenset[str]],
    max_new_tokens: int,
    batch_size: int,
) -> dict[str, float | None]:
    """Greedy rewrites of held-out originals: the share that keeps every content word of the
    original, and the share that ends with EOS before `max_new_tokens` (a rewriter that rewrites)."""
    kept = stopped = 0
    for start in range(0, len(originals), batch_size):
        batch = originals[start : start + batch_size]
        texts, stops = generate_with_stops(model, tokenizer, batch, max_new_tokens=max_new_tokens)
        kept += sum(content_words(o) <= content_words(t[0]) for o, t in zip(batch, texts, strict=True))
        stopped += sum(s[0] for s in stops)
    if not originals:
        log.info("SFT check skipped: no held-out pairs (sft.check_pairs is 0, or the file has under 10 pairs)")
        return {"check_pairs": 0, "keeps_content": None, "ends_with_eos": None}
    n = len(originals)
    result = {"check_pairs": n, "keeps_content": kept / n, "ends_with_eos": stopped / n}
    log.info(
        "SFT check on %d held-out originals: %.1f%% of greedy rewrites keep every content word (target >= %.0f%%), "
        "%.1f%% end with EOS before %d tokens (target >= %.0f%%)",
        len(originals), 100 * result["keeps_content"], 100 * CONTENT_TARGET, 100 * result["ends_with_eos"],
        max_new_tokens, 100 * STOP_TARGET,
    )
    if (result["keeps_content"] < CONTENT_TARGET or result["ends_with_eos"] < STOP_TARGET):
        log.warning("the SFT rewriter misses a target: more sft.epochs (or pairs) would help; "
                    "later stages run on it as it is")
    return result


def sft_stage(ctx: StageContext) -> Output:
    """Fine-tune the base rewriter on the SFT pairs, then check its rewrites of held-out originals."""
    s, c = ctx.settings, ctx.settings.sft
    records = read_records(s.pairs.path, ["original", "rewrite"])
    model, tokenizer = load_rewriter(c.base_model, ctx.device)
    # the last pairs stay out of training; the check below rewrites those of their originals never trained on
    train = records[: len(records) - held_out_share(len(records), c.check_pairs)]
    history = train_sft(
        model, tokenizer, [r.fields["original"] for r in train], [r.fields["rewrite"] for r in train],
        epochs=c.epochs, learning_rate=c.learning_rate, batch_size=c.batch_size, max_length=c.max_length,
        seed=s.seed, precision=c.precision, lr_schedule=c.lr_schedule,
    )
    world = s.pairs.path.startswith(WORLD_PREFIX)  # the world knows its content words exactly
    seen = {r.fields["original"] for r in train}
    unseen = list(dict.fromkeys(r.fields["original"] for r in records[len(train) :]
                                if r.fields["original"] not in seen))
    check = check_rewrites(
        model, tokenizer, unseen, content_words=world_content_words if world else plain_content_words,
        max_new_tokens=c.check_max_new_tokens, batch_size=c.batch_size,
    )
    return Output(pa.Table.from_pylist(history, schema=SFT_LOG), files=pretrained_files(model, tokenizer),
                  meta={"pairs": len(train), "final_loss": history[-1]["loss"], **check})
