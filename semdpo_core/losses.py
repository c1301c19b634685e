"""Preference losses over per-sequence log-probabilities, side by side.

Each takes the policy's and the reference's log pi(y|x) for the chosen and rejected rewrites
(shape [batch]) and returns the per-pair loss (shape [batch]); the trainer takes the mean.
"""

from __future__ import annotations

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
    beta: float,
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
