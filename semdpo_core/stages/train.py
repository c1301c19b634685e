"""The train stage: one preference-training run (a method, and for Sem-DPO one alpha) from the
SFT checkpoint, on the shared pairs and their stored reference log-probs.

The reference model is the SFT model; its log-probs were computed once by the reference stage,
so this loop holds only the policy. Methods differ only in their per-pair loss, declared in the
method registry (`semdpo_core/preference/methods.py`); a semantic method's weights (Sem-DPO's
W = exp(-alpha * d)) are computed once, before the loop, from the stored distances. Checkpoints
go to the store every `train.checkpoint_every` steps; a rerun resumes from the newest intact one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from tqdm.auto import tqdm

from semdpo_core.models.inference import release_models
from semdpo_core.models.loading import load_rewriter
from semdpo_core.models.rewriter import concatenated_logps
from semdpo_core.pipeline.schemas import (
    DISTANCES,
    FIDELITY,
    PAIRS,
    REFERENCE,
    TRAIN_LOG,
)
from semdpo_core.pipeline.stage_context import Output, StageContext
from semdpo_core.preference import checkpoints
from semdpo_core.preference.losses import dpo_logits
from semdpo_core.preference.methods import Method, PairBatch, get_method, run_label
from semdpo_core.preference.optim import (
    mixed_precision,
    optimizer_step,
    warmup_then_linear_decay,
)
from semdpo_core.stages.fidelity import fidelity_margins
from semdpo_core.stages.reference import ReferenceLogps, kl_completions

log = logging.getLogger("semdpo.train")


@dataclass(frozen=True)
class PreferenceData:
    """Training triples (x, y_w, y_l), with what some methods also read about each pair."""

    prompts: list[str]
    chosen: list[str]
    rejected: list[str]
    semantic_distance: list[float] | None = None  # d(x, y_w), from the weigh stage
    kl_completion: list[str] | None = None  # KTO's mismatched completions, as the reference stage stored them
    fidelity_margin: list[float] | None = None  # f(y_w) - f(y_l), from the fidelity stage

    def __len__(self) -> int:
        return len(self.prompts)

    def kl_completions(self) -> list[str]:
        """KTO's mismatched completion of each pair: the stored one, else the next pair's chosen rewrite."""
        return self.kl_completion if self.kl_completion is not None else kl_completions(self.chosen)


def semantic_weights(method: Method, data: PreferenceData, settings: Any, label: str) -> torch.Tensor | None:
    """The method's offline weight of every pair (None for a method without); logged, with a
    warning when it keeps (almost) nothing."""
    if method.pair_weights is None:
        return None
    distances = torch.tensor(data.semantic_distance, dtype=torch.float64)
    weights = method.pair_weights(distances, settings).double()
    log.info("%s: %d pairs, mean weight %.3f, Kish effective size %.1f (distance median %.3f)",
             label, len(weights), weights.mean().item(), kish_effective_size(weights), distances.median().item())
    if weights.sum().item() < 0.01 * len(weights):
        log.warning("%s keeps under 1%% of the pairs' weight: %s", label, method.weight_hint)
    return weights


def normalised_fidelity(data: PreferenceData) -> torch.Tensor | None:
    """The fidelity margins in units of their spread over the training pairs (the additive baseline)."""
    if data.fidelity_margin is None:
        return None
    margins = torch.tensor(data.fidelity_margin, dtype=torch.float64)
    spread = margins.std().item() if len(margins) > 1 else 0.0
    return margins / (spread if spread > 0 else 1.0)


def train_preference(
    policy: Any,
    tokenizer: Any,
    data: PreferenceData,
    reference: ReferenceLogps | None,
    *,
    method: str | Method,
    settings: Any,
    seed: int = 0,
    checkpoint_every: int = 0,
    save_checkpoint: Callable[[int, dict[str, bytes]], None] | None = None,
    resume_from: dict[str, bytes] | None = None,
    on_step: Callable[[dict[str, float]], None] | None = None,
    label: str | None = None,
) -> list[dict[str, float]]:
    """Train `policy` in place with `method`; returns per-optimizer-step metrics (`on_step` sees each).
    `label` names the run in logs and the progress bar (default: the method).

    `settings` holds the run's training settings (beta, learning_rate, ..., the method's own
    section, Sem-DPO's alpha). Every `checkpoint_every` steps the full training state goes to
    `save_checkpoint(step, files)`; `resume_from` (such files) continues from that step with the
    same data order, learning rate and RNG state, ending where an uninterrupted run ends.
    """
    s, m = settings, method if isinstance(method, Method) else get_method(method)
    label = label or m.name
    check_inputs(m, data, reference)  # what the method declared it needs, before any step

    # seeds, and the method's per-pair inputs, computed once
    rng = random.Random(seed)
    torch.manual_seed(seed)
    device = next(policy.parameters()).device
    per_pair = PairInputs(semantic_weights(m, data, s, label), normalised_fidelity(data) if m.uses_fidelity else None,
                       data.kl_completions() if m.uses_kl else None)
    state = m.initial_state(s, seed) if m.initial_state else None

    # optimizer and schedule: warmup, then linear decay to zero over every epoch's steps
    micro_batches = math.ceil(len(data) / s.batch_size)
    total = s.epochs * math.ceil(micro_batches / s.gradient_accumulation_steps)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=s.learning_rate)
    scheduler = warmup_then_linear_decay(optimizer, int(s.warmup_ratio * total), total)
    autocast, scaler = mixed_precision(device, s.precision)

    # resume: weights, optimizer, schedule, the method's state and RNG from the checkpoint
    history: list[dict[str, float]] = []
    resumed = 0
    if resume_from is not None:
        resumed, history = restore_run(resume_from, policy, optimizer, scheduler, state)
        log.info("%s: resuming from the checkpoint at step %d of %d", label, resumed, total)

    if s.disable_dropout:
        disable_dropout(policy)
    policy.train()
    bar = tqdm(total=total, initial=resumed, desc=label, unit="step")
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

            # forward and backward, one micro-batch at a time; gradients accumulate over the group
            batches_out = []
            for idx in group:
                with autocast:
                    batch = pair_batch(policy, tokenizer, data, reference, per_pair, idx, s.max_length)
                out = m.loss(batch, s, state)
                loss = out.losses.mean() / len(group)
                (scaler.scale(loss) if scaler else loss).backward()
                batches_out.append((batch, out, loss.item()))

            # optimizer step: clip, step, schedule
            lr = scheduler.get_last_lr()[0]
            optimizer_step(optimizer, scaler, s.max_grad_norm)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            # log the step; checkpoint every `checkpoint_every` steps (not the last: the stage saves it)
            history.append(step_metrics(len(history), batches_out, s.beta, lr))
            bar.update(1)
            bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
            if on_step:
                on_step(history[-1])
            if save_checkpoint and checkpoint_every and step % checkpoint_every == 0 and step < total:
                save_checkpoint(step, run_files(policy, optimizer, scheduler, state, step, history))
    bar.close()
    policy.eval()
    last = history[-1]
    log.info("%s: %d steps, final loss %.4f, reward margin %.4f, mean weight %.3f",
             label, len(history), last["loss"], last["reward_margin"], last["mean_weight"])
    return history


def run_files(policy: Any, optimizer: Any, scheduler: Any, state: Any, step: int,
              history: list[dict[str, float]]) -> dict[str, bytes]:
    """A run's checkpoint: weights, optimizer, RNG, and the schedule and method state beside them."""
    saved = {"scheduler": scheduler.state_dict(), "loss": state.state_dict() if state is not None else {}}
    return checkpoints.to_files(policy, optimizer, step, history, saved)


def restore_run(files: dict[str, bytes], policy: Any, optimizer: Any, scheduler: Any,
                state: Any) -> tuple[int, list[dict[str, float]]]:
    """`run_files` read back into the run; returns (step, history so far)."""
    step, history, saved = checkpoints.restore(files, policy, optimizer)
    scheduler.load_state_dict(saved["scheduler"])
    if state is not None:
        state.load_state_dict(saved["loss"])
    return step, history


def disable_dropout(model: torch.nn.Module) -> None:
    """Every dropout of `model` at p = 0, as TRL's trainers do: the reference pass runs without
    dropout (eval mode), so a policy with it would not equal the reference at step 0 and every
    reward margin would carry the dropout's noise."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def check_inputs(method: Method, data: PreferenceData, reference: ReferenceLogps | None) -> None:
    """Refuse to start a run without the upstream data its method declared it needs."""
    if method.uses_reference and reference is None:
        raise ValueError(f"{method.name} needs the reference log-probs of the pairs (the reference stage)")
    if method.uses_distance and data.semantic_distance is None:
        raise ValueError(f"{method.name} needs each pair's semantic distance (the weigh stage)")
    if method.uses_fidelity and data.fidelity_margin is None:
        raise ValueError(f"{method.name} needs each pair's fidelity margin (the fidelity stage)")


def kish_effective_size(weights: torch.Tensor) -> float:
    """Kish's effective sample size (sum W)^2 / sum W^2: how many equally weighted pairs the
    weights are worth. A constant factor leaves it unchanged (AdamW is blind to one too); only the
    weights' spread lowers it. 0 when every weight is 0."""
    squares = (weights * weights).sum().item()
    return weights.sum().item() ** 2 / squares if squares > 0 else 0.0


def step_metrics(step: int, micro_batches: list[tuple[PairBatch, Any, float]], beta: float,
                 lr: float) -> dict[str, float]:
    """One optimizer step's log: its loss, DPO's reward margin and accuracy, the pairs' mean
    weight and Kish's effective sample size of the weights, the beta used and the learning rate."""
    margin = torch.cat([log_ratio_margin(b).detach().double().cpu() for b, _, _ in micro_batches])
    weight = torch.cat([(out.weights if out.weights is not None
                         else torch.ones_like(b.chosen_logps)).detach().double().cpu()
                        for b, out, _ in micro_batches])
    last = micro_batches[-1][1]
    return {
        "step": step, "loss": sum(loss for _, _, loss in micro_batches),
        "reward_margin": beta * margin.mean().item(),
        "accuracy": (margin > 0).double().mean().item(), "mean_weight": weight.mean().item(),
        "effective_sample_size": kish_effective_size(weight),
        "beta": float(last.beta if last.beta is not None else beta),
        "learning_rate": lr,
    }


@dataclass(frozen=True)
class PairInputs:
    """What a method reads per pair besides the log-probs, computed once before the loop."""

    semantic_weight: torch.Tensor | None = None  # the method's pair_weights of the distances
    fidelity_margin: torch.Tensor | None = None  # normalised_fidelity
    kl_completions: list[str] | None = None  # KTO's mismatched completions


def pair_batch(
    policy: Any, tokenizer: Any, data: PreferenceData, reference: ReferenceLogps | None, per_pair: PairInputs,
    idx: list[int], max_length: int,
) -> PairBatch:
    """The policy's log-probs of micro-batch `idx` (chosen, rejected and, for KTO, the mismatched
    completions in one forward pass), beside the reference's and the method's per-pair inputs."""
    completions = {"chosen": [data.chosen[i] for i in idx], "rejected": [data.rejected[i] for i in idx]}
    if per_pair.kl_completions is not None:
        completions["kl"] = [per_pair.kl_completions[i] for i in idx]
    out = concatenated_logps(policy, tokenizer, [data.prompts[i] for i in idx], completions, max_length)
    (chosen, chosen_tokens), (rejected, rejected_tokens) = out["chosen"], out["rejected"]
    device, dtype = chosen.device, chosen.dtype
    pick = lambda values: values[idx].to(device)  # noqa: E731
    return PairBatch(
        chosen_logps=chosen, rejected_logps=rejected,
        chosen_tokens=chosen_tokens.to(device), rejected_tokens=rejected_tokens.to(device),
        reference_chosen_logps=pick(reference.chosen) if reference else None,
        reference_rejected_logps=pick(reference.rejected) if reference else None,
        kl_logps=out["kl"][0].detach() if "kl" in out else None,
        reference_kl_logps=pick(reference.kl) if reference and "kl" in out else None,
        semantic_weight=None if per_pair.semantic_weight is None else pick(per_pair.semantic_weight).to(dtype),
        fidelity_margin=None if per_pair.fidelity_margin is None else pick(per_pair.fidelity_margin).to(dtype),
    )


def log_ratio_margin(b: PairBatch) -> torch.Tensor:
    """DPO's margin (logged as reward margin and accuracy); a method without a reference (ORPO)
    is measured against a zero reference: log pi(y_w) - log pi(y_l)."""
    if b.reference_chosen_logps is None:
        return b.chosen_logps - b.rejected_logps
    return dpo_logits(b.chosen_logps, b.rejected_logps, b.reference_chosen_logps, b.reference_rejected_logps)


def preference_data(ctx: StageContext, method: Method) -> tuple[PreferenceData, ReferenceLogps | None]:
    """The run's pairs (with distances, reference log-probs and fidelity margins as its method declares)."""
    store = ctx.store
    table = store.read_table(ctx.inputs["pairs"], DISTANCES if method.uses_distance else PAIRS)
    stored = store.read_table(ctx.inputs["reference"], REFERENCE) if method.uses_reference else None
    if stored is not None and stored.column("prompt_id").to_pylist() != table.column("prompt_id").to_pylist():
        raise ValueError(f"reference log-probs {ctx.inputs['reference']} do not line up with pairs "
                         f"{ctx.inputs['pairs']}; "
                         "rerun the reference stage")
    fidelity = store.read_table(ctx.inputs["fidelity"], FIDELITY) if method.uses_fidelity else None
    data = PreferenceData(
        prompts=table.column("prompt").to_pylist(),
        chosen=table.column("chosen").to_pylist(),
        rejected=table.column("rejected").to_pylist(),
        semantic_distance=table.column("semantic_distance").to_pylist() if method.uses_distance else None,
        kl_completion=stored.column("kl_completion").to_pylist() if stored is not None else None,
        fidelity_margin=fidelity_margins(fidelity, table) if fidelity is not None else None,
    )
    if stored is None:
        return data, None
    column = lambda name: torch.tensor(stored.column(name).to_pylist(), dtype=torch.float64)  # noqa: E731
    return data, ReferenceLogps(
        column("reference_chosen_logps"), column("reference_rejected_logps"), column("reference_kl_logps"),
        column("chosen_tokens"), column("rejected_tokens"),
    )


TRACKED = ("loss", "reward_margin", "accuracy", "mean_weight", "effective_sample_size", "beta", "learning_rate")


@contextlib.contextmanager
def step_trackers(ctx: StageContext, label: str, resumed: int) -> Iterator[Callable[[dict[str, float]], None] | None]:
    """What sees every optimizer step besides the run's log: TensorBoard event files under
    `train.logging_dir/<config's run>` when `train.report_to` names it (a resumed run first drops
    the events past its checkpoint, as TRL's trainers do)."""
    if "tensorboard" not in ctx.runtime.report_to:
        yield None
        return
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError("train.report_to names tensorboard, which is not installed: "
                          "pip install tensorboard") from None
    log_dir = Path(ctx.runtime.logging_dir) / f"{label}-{ctx.ref.fingerprint}"
    writer = SummaryWriter(str(log_dir), purge_step=resumed + 1)  # steps count from 1; from scratch: drop all
    log.info("%s: TensorBoard events in %s (tensorboard --logdir %s)", label, log_dir, ctx.runtime.logging_dir)

    def on_step(metrics: dict[str, float]) -> None:
        for name in TRACKED:
            writer.add_scalar(f"train/{name}", metrics[name], int(metrics["step"]) + 1)

    try:
        yield on_step
    finally:
        writer.close()


def train_stage(ctx: StageContext) -> Output:
    """One training run: the policy from the SFT checkpoint, trained with the run's method; its
    per-step log (TRAIN_LOG) and final checkpoint. Resumes from the newest stored checkpoint."""
    started = time.time()
    s = ctx.settings
    method = ctx.method or get_method(s.method)  # the plan's entry: a plugin's method is known on any worker
    if method.name != s.method:
        raise ValueError(f"training job {ctx.ref} carries method {method.name!r} but its settings say {s.method!r}")
    label = run_label(method.name, s.alpha, sweep=True) if "alpha" in s else method.name
    data, reference = preference_data(ctx, method)
    release_models()  # training needs the memory that cached inference models hold
    store = ctx.store
    latest = store.latest_checkpoint(ctx.ref)
    if latest is not None:
        log.info("%s: found a checkpoint at step %d in the store", label, latest[0])

    def save(step: int, files: dict[str, bytes]) -> None:
        where = store.write_checkpoint(ctx.ref, step, files)
        removed = store.prune_checkpoints(ctx.ref, ctx.runtime.keep_checkpoints)
        log.debug("%s: checkpoint at step %d -> %s (removed steps %s)", label, step, where, removed)

    policy, tokenizer = load_rewriter(ctx.checkpoint_dir("sft"), ctx.device)
    with step_trackers(ctx, label, latest[0] if latest else 0) as on_step:
        history = train_preference(
            policy, tokenizer, data, reference, method=method, settings=s, seed=s.seed, label=label,
            checkpoint_every=ctx.runtime.checkpoint_every, save_checkpoint=save,
            resume_from=latest[1] if latest else None,
            on_step=on_step,
        )
    log_table = pa.Table.from_pylist([{"method": method.name, **h} for h in history], schema=TRAIN_LOG)
    meta = {"method": method.name, "pairs": len(data), "final_loss": history[-1]["loss"],
            "mean_weight": sum(h["mean_weight"] for h in history) / len(history),
            "started": started, "finished": time.time()}  # wall clock of the run (Ray runs side by side)
    if "alpha" in s:
        meta["alpha"] = s.alpha
    return Output(log_table, files=checkpoints.pretrained_files(policy, tokenizer), meta=meta)
