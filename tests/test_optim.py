"""What a weight on the loss does to training with this project's optimizer (AdamW, gradient
clipping, warmup then linear decay): a constant factor on every pair's loss leaves the weights
trained where they were, while halving the learning rate moves them a great deal; weights that
differ across pairs change what is learned. So Sem-DPO's mean weight is not a smaller step: only
the spread of its weights across pairs can matter (issue 23). The one way a constant factor
acts is through clipping, when it decides whether a step's gradient is clipped."""

from __future__ import annotations

import torch

from semdpo_core.preference.optim import optimizer_step, warmup_then_linear_decay

STEPS, LEARNING_RATE, MAX_GRAD_NORM = 128, 2e-3, 1.0


def trained(pair_weights: torch.Tensor, learning_rate: float = LEARNING_RATE,
            max_grad_norm: float = MAX_GRAD_NORM) -> tuple[torch.Tensor, torch.Tensor]:
    """A small network fit on fixed data with every example's loss multiplied by its weight, as
    the train stage multiplies each pair's loss; returns its parameters before and after."""
    torch.manual_seed(0)
    inputs, targets = torch.randn(64, 8), torch.randn(64, 1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    start = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    schedule = warmup_then_linear_decay(optimizer, STEPS // 10, STEPS)
    for step in range(STEPS):
        batch = torch.arange(8) + 8 * (step % 8)
        losses = (model(inputs[batch]) - targets[batch]).pow(2).squeeze(1)
        (pair_weights[batch] * losses).mean().backward()
        optimizer_step(optimizer, None, max_grad_norm)
        schedule.step()
        optimizer.zero_grad()
    return start, torch.nn.utils.parameters_to_vector(model.parameters()).detach()


def moved(other: torch.Tensor, plain: torch.Tensor, start: torch.Tensor) -> float:
    """How far another run ended from the plain one, as a share of the distance plain training moved."""
    return float((other - plain).norm() / (plain - start).norm())


def test_a_constant_weight_is_invisible_to_adamw_but_its_spread_is_not():
    ones = torch.ones(64)
    spread = torch.linspace(0.0, 1.0, 64)[torch.randperm(64, generator=torch.Generator().manual_seed(1))]
    for never_or_always in (1e9, 0.01):  # clipping on no step, or on every step
        start, plain = trained(ones, max_grad_norm=never_or_always)
        half_loss = moved(trained(0.5 * ones, max_grad_norm=never_or_always)[1], plain, start)
        half_rate = moved(trained(ones, LEARNING_RATE / 2, max_grad_norm=never_or_always)[1], plain, start)
        weighted = moved(trained(spread, max_grad_norm=never_or_always)[1], plain, start)
        assert half_loss < 1e-4, (never_or_always, half_loss)  # Sem-DPO's mean weight of 0.5, on every pair
        assert half_rate > 0.2 and weighted > 0.1, (never_or_always, half_rate, weighted)


def test_a_constant_weight_acts_only_where_it_decides_whether_a_step_is_clipped():
    """With the threshold inside the range of the gradients' norms, halving the loss changes which
    steps are clipped: the one route by which a constant factor moves the result, still well
    below what halving the learning rate does."""
    ones = torch.ones(64)
    start, plain = trained(ones)
    half_loss = moved(trained(0.5 * ones)[1], plain, start)
    half_rate = moved(trained(ones, LEARNING_RATE / 2)[1], plain, start)
    assert 1e-4 < half_loss < half_rate / 2, (half_loss, half_rate)
