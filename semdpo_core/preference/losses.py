"""Preference losses over per-sequence log-probabilities, side by side.

Inputs are log pi(y|x) summed over a completion's tokens (shape [batch]): the policy's and the
reference's, for the chosen rewrite y_w and the rejected rewrite y_l. Each loss returns the
per-pair loss (shape [batch]); the trainer averages. Where TRL implements a method, the
formula and its conventions (IPO's per-token normalisation, KTO's clamped KL reference point,
ORPO's length-averaged odds) follow TRL, and tests check the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


def dpo_logits(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
) -> torch.Tensor:
    """The log-ratio margin: (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))."""
    return (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float | torch.Tensor,
) -> torch.Tensor:
    """DPO (Rafailov et al., 2023): -log sigmoid(beta * margin)."""
    logits = dpo_logits(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    return -F.logsigmoid(beta * logits)


def semantic_weight(semantic_distance: torch.Tensor, alpha: float) -> torch.Tensor:
    """W = exp(-alpha * d), d = 1 - cos(e(x), e(y_w)); alpha = 0 gives W = 1 (plain DPO)."""
    return torch.exp(-alpha * semantic_distance)


def sem_dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float,
    semantic_weight: torch.Tensor,
) -> torch.Tensor:
    """Sem-DPO: the DPO loss of each pair scaled by its offline semantic weight W(x, y_w)."""
    loss = dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta)
    return semantic_weight * loss


def semantic_filter(semantic_distance: torch.Tensor, tau: float) -> torch.Tensor:
    """The hard semantic filter of the paper's Proposition 1, as a weight on each pair's DPO loss
    (`sem_dpo_loss`): 1 where d <= tau, 0 elsewhere."""
    return (semantic_distance <= tau).double()


def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
) -> torch.Tensor:
    """IPO (Azar et al., 2023): (per-token log-ratio margin - 1/(2 beta))^2, beta being IPO's tau."""
    chosen = (policy_chosen_logps - reference_chosen_logps) / chosen_tokens.clamp(min=1)
    rejected = (policy_rejected_logps - reference_rejected_logps) / rejected_tokens.clamp(min=1)
    return (chosen - rejected - 1 / (2 * beta)) ** 2


def additive_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float,
    fidelity_margin: torch.Tensor,
    coefficient: float,
) -> torch.Tensor:
    """The additive-reward baseline (paper, Appendix D): the text-fidelity reward gap f_w - f_l
    (normalised) enters the DPO objective as an extra reward term, here as a margin offset:
    -log sigmoid(beta * margin - coefficient * fidelity_margin)."""
    logits = dpo_logits(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    return -F.logsigmoid(beta * logits - coefficient * fidelity_margin)


def kto_kl(policy_kl_logps: torch.Tensor, reference_kl_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point: the batch's mean log-ratio on mismatched (x, y') pairs, >= 0, no gradient."""
    return (policy_kl_logps - reference_kl_logps).mean().detach().clamp(min=0)


def kto_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float,
    kl: torch.Tensor,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """KTO (Ethayarajh et al., 2024) on paired data: y_w desirable, y_l undesirable, each pair's
    loss the mean of its two terms (so the batch mean equals KTO's mean over all 2B examples)."""
    chosen = 1 - torch.sigmoid(beta * ((policy_chosen_logps - reference_chosen_logps) - kl))
    rejected = 1 - torch.sigmoid(beta * (kl - (policy_rejected_logps - reference_rejected_logps)))
    return (desirable_weight * chosen + undesirable_weight * rejected) / 2


def orpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
    orpo_lambda: float,
) -> torch.Tensor:
    """ORPO (Hong et al., 2024), no reference model: the chosen rewrite's per-token NLL plus
    lambda * -log sigmoid(log odds ratio) of the length-averaged log-probs."""
    chosen = policy_chosen_logps / chosen_tokens.clamp(min=1)
    rejected = policy_rejected_logps / rejected_tokens.clamp(min=1)
    log_odds = (chosen - rejected) - (torch.log1p(-torch.exp(chosen)) - torch.log1p(-torch.exp(rejected)))
    return -chosen - orpo_lambda * F.logsigmoid(log_odds)


@dataclass
class BetaDPO:
    """beta-DPO (Wu et al., 2024): a batch-level beta from the log-ratio margins, and
    margin-guided filtering of outlier pairs. State (M_0, sigma) is a moving average over batches.

        M_i        = margin of pair i (dpo_logits, no gradient)
        keep       = rho * batch pairs, drawn without replacement with p_i ~ exp(-(M_i - M_0)^2 / 2 sigma^2)
        beta_batch = beta * (1 + alpha * (mean_{kept} M_i - M_0)), at least `min_beta`
    """

    beta: float
    alpha: float = 0.5
    rho: float = 0.8
    momentum: float = 0.9
    min_beta: float = 1e-3
    m0: float | None = None
    sigma: float | None = None
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))

    def state_dict(self) -> dict[str, object]:
        """The moving averages and the sampling generator, for a training checkpoint."""
        return {"m0": self.m0, "sigma": self.sigma, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.m0, self.sigma = state["m0"], state["sigma"]
        self.generator.set_state(state["generator"])

    def update(self, margins: torch.Tensor) -> None:
        """Fold a batch's margin mean and spread into the moving averages."""
        mean, std = margins.mean().item(), margins.std(unbiased=False).item()
        if self.m0 is None or self.sigma is None:
            self.m0, self.sigma = mean, std
        else:
            self.m0 = self.momentum * self.m0 + (1 - self.momentum) * mean
            self.sigma = self.momentum * self.sigma + (1 - self.momentum) * std

    def select(self, margins: torch.Tensor) -> torch.Tensor:
        """Indices of the pairs kept for this batch."""
        count = max(1, round(self.rho * len(margins)))
        if count >= len(margins):
            return torch.arange(len(margins))
        sigma = max(self.sigma or 0.0, 1e-6)
        p = torch.exp(-((margins.detach().cpu().double() - self.m0) ** 2) / (2 * sigma**2)) + 1e-12
        return torch.multinomial(p, count, replacement=False, generator=self.generator).sort().values

    def loss(
        self,
        policy_chosen_logps: torch.Tensor,
        policy_rejected_logps: torch.Tensor,
        reference_chosen_logps: torch.Tensor,
        reference_rejected_logps: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(per-pair loss over all pairs, 0 where filtered out; kept-pair mask; this batch's beta)."""
        margins = dpo_logits(policy_chosen_logps, policy_rejected_logps,
                             reference_chosen_logps, reference_rejected_logps)
        self.update(margins.detach())
        kept = self.select(margins.detach()).to(margins.device)
        beta = max(self.min_beta, self.beta * (1 + self.alpha * (margins.detach()[kept].mean().item() - self.m0)))
        mask = torch.zeros_like(margins)
        mask[kept] = 1.0
        # mean over kept pairs = sum(mask * loss) / kept: scale so that the trainer's plain mean gives it
        losses = mask * -F.logsigmoid(beta * margins) * (len(margins) / len(kept))
        return losses, mask, beta
