"""The preference methods: one entry each, declaring what it needs, its loss and its settings.

An entry says which upstream datasets the method's training run reads (reference log-probs,
semantic distances, fidelity scores), whether its loss needs KTO's mismatched completions, its
config section (`train.<name>`), and how its per-pair loss is computed from a `PairBatch`. The
config accepts the names registered here, the plan gives each run the inputs its method declares,
the train stage calls the loss, and the report reads run labels back through `parse_run_label`.

Adding a method is one `register(Method(...))` (here, or in your own module before the config is
loaded), its loss function in `semdpo_core/preference/losses.py`, and a test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field

from semdpo_core.pipeline.config_section import Section
from semdpo_core.preference.losses import (
    BetaDPO,
    additive_loss,
    dpo_loss,
    ipo_loss,
    kto_kl,
    kto_loss,
    orpo_loss,
    sem_dpo_loss,
    semantic_filter,
    semantic_weight,
)


@dataclass(frozen=True)
class PairBatch:
    """One micro-batch of pairs as a loss sees it: log-probs summed over each rewrite's tokens
    (shape [batch]), of the policy and of the reference (None for a method without one), and
    whatever else the method declared it needs."""

    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor
    reference_chosen_logps: torch.Tensor | None = None
    reference_rejected_logps: torch.Tensor | None = None
    kl_logps: torch.Tensor | None = None  # KTO: the policy's log-probs of mismatched completions (no gradient)
    reference_kl_logps: torch.Tensor | None = None
    semantic_weight: torch.Tensor | None = None  # the method's offline weight of each pair (`pair_weights`)
    fidelity_margin: torch.Tensor | None = None  # f(y_w) - f(y_l), in units of its spread over the pairs


@dataclass(frozen=True)
class LossOutput:
    """What a method's loss gives for a micro-batch: the per-pair loss (the trainer averages), each
    pair's weight (logged as mean weight and Kish's effective sample size; None: all 1), and the beta it used."""

    losses: torch.Tensor
    weights: torch.Tensor | None = None
    beta: float | None = None


LossFn = Callable[[PairBatch, Any, Any], LossOutput]  # (batch, the run's settings, the method's state)


@dataclass(frozen=True)
class Method:
    """One preference method and everything the pipeline must know about it."""

    name: str
    loss: LossFn
    summary: str  # the loss in one line (README's method table shows it; a test checks)
    uses_reference: bool = True  # the reference stage's log-probs of the pairs
    uses_distance: bool = False  # the weigh stage's semantic distances d(x, y_w)
    uses_fidelity: bool = False  # the fidelity stage's per-image text-fidelity scores
    uses_kl: bool = False  # KTO's mismatched completions, in the same forward pass
    section: type[Section] | None = None  # its own settings, `train.<name>`
    sweeps_alpha: bool = False  # one run per `train.alpha` when it is a list
    pair_weights: Callable[[torch.Tensor, Any], torch.Tensor] | None = None  # W(d), computed once before training
    weight_hint: str = ""  # what to change when `pair_weights` keep (almost) nothing
    # a stateful loss's state, from (settings, seed); checkpointed
    initial_state: Callable[[Any, int], Any] | None = None


METHODS: dict[str, Method] = {}


class UnknownMethod(ValueError):
    """A method name that no registry entry declares."""


RESERVED = ("human", "sft", "prompts")  # rows and inputs of the evaluate stage that are not training runs


def register(method: Method) -> Method:
    """Add a method to the registry (a name may be registered once)."""
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    if method.name in RESERVED or not method.name.replace("_", "").isalnum():
        raise ValueError(f"method name {method.name!r}: use letters, digits and _, and none of {', '.join(RESERVED)}")
    METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method added with `register` (for tests and plugins)."""
    METHODS.pop(name, None)


def get_method(name: str) -> Method:
    """The registry entry of `name`, or an error listing the known methods."""
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownMethod(f"unknown method {name!r}; known methods: {', '.join(METHODS)}") from None


# --- run labels: one training run per method, and per alpha for a method that sweeps it ---------


@dataclass(frozen=True)
class TrainRun:
    """One training run: a method, and its alpha when it sweeps one."""

    label: str
    method: str
    alpha: float | None = None


def run_label(method: str, alpha: float | None = None, sweep: bool = False) -> str:
    """`sem_dpo`, or `sem_dpo@alpha=2` for one run of a sweep."""
    return f"{method}@alpha={alpha:g}" if sweep else method


def parse_run_label(label: str) -> tuple[str, float | None]:
    """(method, alpha of a sweep run or None): the inverse of `run_label`."""
    method, sep, value = label.partition("@alpha=")
    return (method, float(value)) if sep else (method, None)


def train_runs(methods: list[str], alphas: list[float]) -> list[TrainRun]:
    """The runs `train.methods` asks for; a list of alphas gives one run per alpha of each method that sweeps it."""
    runs = []
    for name in methods:
        if get_method(name).sweeps_alpha:
            runs += [TrainRun(run_label(name, a, sweep=len(alphas) > 1), name, a) for a in alphas]
        else:
            runs.append(TrainRun(name, name))
    return runs


# --- the methods' own settings -------------------------------------------------------------------


class KTOConfig(Section):
    """KTO's weights of the desirable (chosen) and undesirable (rejected) terms (TRL's defaults)."""

    desirable_weight: float = Field(1.0, gt=0)
    undesirable_weight: float = Field(1.0, gt=0)


class ORPOConfig(Section):
    """ORPO's weight of the odds-ratio term against the chosen rewrite's NLL (TRL's default)."""

    orpo_lambda: float = Field(0.1, gt=0)


class BetaDPOConfig(Section):
    """beta-DPO: beta_batch = beta * (1 + alpha * (mean margin - M_0)); keeps rho of each batch."""

    alpha: float = Field(0.5, ge=0)
    rho: float = Field(0.8, gt=0, le=1)
    momentum: float = Field(0.9, ge=0, le=1)


class HardFilterConfig(Section):
    """Proposition 1's hard semantic filter: train only on pairs with d(x, y_w) <= tau."""

    tau: float = Field(0.3, gt=0, le=2)


class AdditiveConfig(Section):
    """The additive-reward baseline: DPO whose margin must also cover the fidelity gap,
    loss = -log sigmoid(beta * margin - coefficient * (f_w - f_l) / std(f_w - f_l))."""

    coefficient: float = Field(1.0, ge=0)


# --- the registry's entries: each loss in a line or two ------------------------------------------


def _logps(b: PairBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(policy chosen, policy rejected, reference chosen, reference rejected) log-probs."""
    return b.chosen_logps, b.rejected_logps, b.reference_chosen_logps, b.reference_rejected_logps


def dpo(batch: PairBatch, settings: Any, state: None) -> LossOutput:
    return LossOutput(dpo_loss(*_logps(batch), settings.beta))


def sem_dpo(batch: PairBatch, settings: Any, state: None) -> LossOutput:
    return LossOutput(sem_dpo_loss(*_logps(batch), settings.beta, batch.semantic_weight), batch.semantic_weight)


def ipo(batch: PairBatch, settings: Any, state: None) -> LossOutput:
    return LossOutput(ipo_loss(*_logps(batch), settings.beta, batch.chosen_tokens, batch.rejected_tokens))


def kto(batch: PairBatch, settings: Any, state: None) -> LossOutput:
    kl = kto_kl(batch.kl_logps, batch.reference_kl_logps)
    c = settings.kto
    return LossOutput(kto_loss(*_logps(batch), settings.beta, kl, c.desirable_weight, c.undesirable_weight))


def orpo(batch: PairBatch, settings: Any, state: None) -> LossOutput:
    b = batch
    return LossOutput(orpo_loss(b.chosen_logps, b.rejected_logps, b.chosen_tokens, b.rejected_tokens,
                                settings.orpo.orpo_lambda))


def beta_dpo(batch: PairBatch, settings: Any, state: BetaDPO) -> LossOutput:
    losses, kept, beta = state.loss(*_logps(batch))
    return LossOutput(losses, kept, beta)


def beta_dpo_state(settings: Any, seed: int) -> BetaDPO:
    c = settings.beta_dpo
    return BetaDPO(settings.beta, c.alpha, c.rho, c.momentum, generator=torch.Generator().manual_seed(seed))


def hard_filter(batch: PairBatch, settings: Any, state: None) -> LossOutput:
    return LossOutput(sem_dpo_loss(*_logps(batch), settings.beta, batch.semantic_weight), batch.semantic_weight)


def additive(batch: PairBatch, settings: Any, state: None) -> LossOutput:
    return LossOutput(additive_loss(*_logps(batch), settings.beta, batch.fidelity_margin,
                                    settings.additive.coefficient))


register(Method("dpo", dpo, "-log sigmoid(beta * margin)"))
register(Method(
    "sem_dpo", sem_dpo, "W * DPO, W = exp(-alpha * d(x, y_w))", uses_distance=True, sweeps_alpha=True,
    pair_weights=lambda d, settings: semantic_weight(d, settings.alpha), weight_hint="lower train.alpha",
))
register(Method("ipo", ipo, "(per-token margin - 1/(2 beta))^2"))
register(Method("kto", kto, "desirable/undesirable terms around a KL reference point", uses_kl=True, section=KTOConfig))
register(Method("orpo", orpo, "chosen NLL - lambda * log sigmoid(log odds), no reference", uses_reference=False,
                section=ORPOConfig))
register(Method("beta_dpo", beta_dpo, "DPO with a per-batch beta and margin-guided filtering", section=BetaDPOConfig,
                initial_state=beta_dpo_state))
register(Method(
    "hard_filter", hard_filter, "1{d <= tau} * DPO (Proposition 1)", uses_distance=True, section=HardFilterConfig,
    pair_weights=lambda d, settings: semantic_filter(d, settings.hard_filter.tau),
    weight_hint="raise train.hard_filter.tau",
))
register(Method("additive", additive, "DPO whose margin must also cover the text-fidelity gap (App. D)",
                uses_fidelity=True, section=AdditiveConfig))

# what `train.methods` trains unless told otherwise: the methods above (a plugin's must be named)
DEFAULT_METHODS: tuple[str, ...] = tuple(METHODS)


class ShuffledWeightsConfig(Section):
    """The drift study's control: Sem-DPO's weights exp(-alpha d) at this alpha, shuffled across pairs."""

    alpha: float = Field(4.0, ge=0)


def shuffled_semantic_weights(d: torch.Tensor, settings: Any) -> torch.Tensor:
    """Sem-DPO's weights of the pairs in another order (seeded by the run's seed): the same spread,
    no relation to which pair drifts."""
    weights = semantic_weight(d, settings.sem_dpo_shuffled.alpha)
    return weights[torch.randperm(len(weights), generator=torch.Generator().manual_seed(settings.seed))]


# a control for the drift study, not a method of the paper: trained only when `train.methods` names it
register(Method(
    "sem_dpo_shuffled", sem_dpo, "W shuffled across pairs * DPO (the drift study's control)", uses_distance=True,
    section=ShuffledWeightsConfig, pair_weights=shuffled_semantic_weights,
    weight_hint="lower train.sem_dpo_shuffled.alpha",
))
