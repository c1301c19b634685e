"""The rewriter: how a prompt is posed to the causal LM, sequence log-probs, and sampling.

A training example is `template(prompt)` followed by ` rewrite<eos>`; only the rewrite's tokens
count in log pi(y|x). Prompt and completion are tokenized separately and concatenated, so the
boundary never merges tokens (the same convention as TRL).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

TEMPLATE = "{prompt}\nRewrite:"


def pose(prompt: str) -> str:
    """The text the rewriter sees for a user prompt."""
    return TEMPLATE.format(prompt=prompt)


def prompt_token_count(tokenizer: Any, prompt: str) -> int:
    """Tokens the posed prompt takes in the rewriter's context."""
    return len(tokenizer(pose(prompt), add_special_tokens=False, verbose=False).input_ids)  # no warning for a long one


def encode_pairs(tokenizer: Any, prompts: list[str], completions: list[str],
                 max_length: int) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask, and a mask of the completion tokens (incl. EOS)."""
    rows = []
    for prompt, completion in zip(prompts, completions, strict=True):
        p = tokenizer(pose(prompt), add_special_tokens=False).input_ids
        c = tokenizer(" " + completion, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        ids = (p + c)[:max_length]
        mask = ([0] * len(p) + [1] * len(c))[:max_length]
        rows.append((ids, mask))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows])
    attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows])
    completion = torch.tensor([m + [0] * (width - len(m)) for _, m in rows])
    return {"input_ids": input_ids, "attention_mask": attention, "completion_mask": completion}


def sequence_logps(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of log pi(token) over each row's completion tokens: log pi(y|x), shape [batch]."""
    device = next(model.parameters()).device
    input_ids = batch["input_ids"].to(device)
    logits = model(input_ids=input_ids, attention_mask=batch["attention_mask"].to(device)).logits
    logps = torch.gather(F.log_softmax(logits[:, :-1].float(), dim=-1), 2, input_ids[:, 1:, None]).squeeze(2)
    mask = batch["completion_mask"][:, 1:].to(device)
    return (logps * mask).sum(-1)


def completion_logps(model: Any, tokenizer: Any, prompts: list[str], completions: list[str],
                     max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
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


def completion_nll(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean negative log-likelihood per completion token: the SFT loss."""
    device = next(model.parameters()).device
    return -sequence_logps(model, batch).sum() / batch["completion_mask"][:, 1:].sum().clamp(min=1).to(device)


def generate(model: Any, tokenizer: Any, prompts: list[str], **settings: Any) -> list[list[str]]:
    """Rewrites for a batch of prompts: `num_return_sequences` per prompt, decoded and stripped
    (the settings of `generate_with_stops`)."""
    return generate_with_stops(model, tokenizer, prompts, **settings)[0]


@torch.no_grad()
def generate_with_stops(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    *,
    num_return_sequences: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 32,
    seed: int = 0,
) -> tuple[list[list[str]], list[list[bool]]]:
    """`generate`'s rewrites and, for each, whether the rewriter ended it with EOS (True) or the
    `max_new_tokens` limit cut it off (False)."""
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    enc = tokenizer([pose(p) for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(seed)
    kwargs: dict[str, Any] = {"do_sample": do_sample, "max_new_tokens": max_new_tokens}
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    out = model.generate(
        input_ids=enc.input_ids.to(device),
        attention_mask=enc.attention_mask.to(device),
        num_return_sequences=num_return_sequences,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **kwargs,
    )
    new_tokens = out[:, enc.input_ids.shape[1] :]
    texts = [" ".join(t.split()) for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    stopped = (new_tokens == tokenizer.eos_token_id).any(dim=1).tolist()
    k = num_return_sequences
    return ([texts[i * k : (i + 1) * k] for i in range(len(prompts))],
            [stopped[i * k : (i + 1) * k] for i in range(len(prompts))])
