"""Training checkpoints as files: weights in safetensors, optimizer and RNG state beside them.

The core knows nothing of where checkpoints go: the trainer hands `to_files(...)` to a callback,
and a resumed run gets the files back for `restore(...)`.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

WEIGHTS = "model.safetensors"
STATE = "trainer_state.pt"


def to_files(
    model: Any, optimizer: torch.optim.Optimizer, step: int, history: list[dict[str, float]],
    extra: dict[str, Any] | None = None
) -> dict[str, bytes]:
    """Everything needed to continue training exactly where it stopped (`extra`: scheduler, method state)."""
    with tempfile.TemporaryDirectory() as tmp:
        save_model(model, str(Path(tmp) / WEIGHTS))  # handles tied weights (lm_head = wte)
        weights = (Path(tmp) / WEIGHTS).read_bytes()
    state = {
        "step": step,
        "history": history,
        "extra": extra or {},
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return {WEIGHTS: weights, STATE: buffer.getvalue()}


def restore(
    files: dict[str, bytes], model: Any, optimizer: torch.optim.Optimizer
) -> tuple[int, list[dict[str, float]], dict[str, Any]]:
    """Load a checkpoint into `model` and `optimizer`; returns (step, history so far, extra)."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / WEIGHTS).write_bytes(files[WEIGHTS])
        load_model(model, str(Path(tmp) / WEIGHTS), device=str(next(model.parameters()).device))
    state = torch.load(io.BytesIO(files[STATE]), weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["step"], state["history"], state["extra"]


def pretrained_files(model: Any, tokenizer: Any) -> dict[str, bytes]:
    """A `save_pretrained` folder (model and tokenizer) as {relative path: bytes}, for the store."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        return {str(p.relative_to(tmp)): p.read_bytes() for p in sorted(Path(tmp).rglob("*")) if p.is_file()}
