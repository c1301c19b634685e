"""What SFT and preference training share: the learning-rate schedule, mixed precision, the step."""

from __future__ import annotations

import contextlib

import torch


def warmup_then_linear_decay(optimizer: torch.optim.Optimizer, warmup_steps: int,
                             total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate rises linearly over the warmup, then falls linearly to zero."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def mixed_precision(device: torch.device,
                    precision: str) -> tuple[contextlib.AbstractContextManager, torch.amp.GradScaler | None]:
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
