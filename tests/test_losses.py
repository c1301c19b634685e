"""Sem-DPO's weight and loss against the paper's formulas, computed by hand."""

import math

import pytest
import torch

from semdpo_core.preference.losses import dpo_loss, sem_dpo_loss, semantic_weight
from semdpo_core.stages.weigh import cosine_distance, semantic_distances


def test_dpo_loss_matches_hand_computation():
    # margin = (-5 - -6) - (-7 - -6.5) = 1 - (-0.5) = 1.5 ; loss = -log sigmoid(0.1 * 1.5)
    loss = dpo_loss(torch.tensor([-5.0]), torch.tensor([-7.0]), torch.tensor([-6.0]), torch.tensor([-6.5]), beta=0.1)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.15)), abs=1e-7)


@pytest.mark.parametrize("alpha", [0.5, 4.0, 10.0])
def test_semantic_weight_is_exp_minus_alpha_times_cosine_distance(alpha):
    angles = torch.tensor([0.0, 0.3, 1.0, 2.0])
    prompt = torch.stack([torch.ones(4), torch.zeros(4)], dim=1)  # e(x) = [1, 0]
    chosen = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)  # e(y_w) at each angle
    distance = cosine_distance(prompt, chosen)
    expected = [math.exp(-alpha * (1 - math.cos(a))) for a in angles.tolist()]
    assert semantic_weight(distance, alpha).tolist() == pytest.approx(expected, rel=1e-6)


class FixedEncoder:
    """Known embeddings for known texts."""

    vectors = {"x": [1.0, 0.0, 0.0], "same": [2.0, 0.0, 0.0], "orthogonal": [0.0, 3.0, 0.0],
               "opposite": [-1.0, 0.0, 0.0]}

    def encode(self, texts, batch_size=64):
        return torch.nn.functional.normalize(torch.tensor([self.vectors[t] for t in texts]), dim=-1)


def test_weigh_stage_gives_the_distance_and_sem_dpo_its_weight_per_pair():
    distance = semantic_distances(FixedEncoder(), ["x", "x", "x"], ["same", "orthogonal", "opposite"], batch_size=2)
    assert distance == pytest.approx([0.0, 1.0, 2.0], abs=1e-7)
    weight = semantic_weight(torch.tensor(distance), alpha=4.0)
    assert weight.tolist() == pytest.approx([1.0, math.exp(-4.0), math.exp(-8.0)], rel=1e-6)


def test_alpha_zero_gives_exactly_the_dpo_loss():
    g = torch.Generator().manual_seed(0)
    logps = [-torch.rand(16, generator=g) * 50 for _ in range(4)]
    distance = torch.rand(16, generator=g) * 2
    plain = dpo_loss(*logps, beta=0.05)
    weighted = sem_dpo_loss(*logps, beta=0.05, semantic_weight=semantic_weight(distance, alpha=0.0))
    assert torch.equal(plain, weighted)


def test_sem_dpo_gradient_of_each_pair_is_weight_times_dpo_gradient():
    g = torch.Generator().manual_seed(1)
    base = [-torch.rand(6, generator=g, dtype=torch.float64) * 20 for _ in range(4)]
    weights = semantic_weight(torch.rand(6, generator=g, dtype=torch.float64), alpha=4.0)

    def grads(weighted: bool):
        chosen, rejected = base[0].clone().requires_grad_(), base[1].clone().requires_grad_()
        if weighted:
            loss = sem_dpo_loss(chosen, rejected, base[2], base[3], 0.05, weights)
        else:
            loss = dpo_loss(chosen, rejected, base[2], base[3], 0.05)
        loss.sum().backward()
        return chosen.grad, rejected.grad

    (wc, wr), (dc, dr) = grads(True), grads(False)
    assert torch.allclose(wc, weights * dc) and torch.allclose(wr, weights * dr)
    assert not torch.allclose(wc, dc)  # the weights really changed the gradient
