"""Our losses against TRL's own code paths (DPO sigmoid, IPO, KTO, ORPO) on the same random
log-probabilities, and against hand computation for Sem-DPO, beta-DPO and the hard filter.

TRL 1.x computes these losses inside its trainers' `_compute_loss`, after a model forward. The
tests run that very code on a test-only shim: a stand-in model whose forward returns the chosen
per-token log-probs, and a stand-in trainer object holding the settings `_compute_loss` reads.
"""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from semdpo_core.preference.losses import (
    BetaDPO,
    additive_loss,
    dpo_logits,
    dpo_loss,
    ipo_loss,
    kto_kl,
    kto_loss,
    orpo_loss,
    sem_dpo_loss,
    semantic_filter,
)

trl = pytest.importorskip("trl")

B, T = 6, 5


def random_logps(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {k: -torch.rand(B, generator=g, dtype=torch.float64) * 30 - 1 for k in ("pc", "pr", "rc", "rr", "pkl", "rkl")}
    out["nc"] = torch.randint(1, T + 1, (B,), generator=g).double()
    out["nr"] = torch.randint(1, T + 1, (B,), generator=g).double()
    return out


class StandInModel:
    """Returns fixed per-token log-probs: row i sums to the log-prob we want TRL to see."""

    training = True

    def __init__(self, logps: torch.Tensor, width: int):
        self.log_probs = torch.zeros(len(logps), width, dtype=logps.dtype)
        self.log_probs[:, 0] = logps

    def __call__(self, **kwargs):
        n, w = self.log_probs.shape
        return SimpleNamespace(
            log_probs=self.log_probs, entropy=torch.zeros(n, w), mean_logits=torch.zeros(n, w),
            is_top1=torch.zeros(n, w, dtype=torch.bool),
        )


def stand_in_trainer(model, **settings):
    identity = lambda x: x  # noqa: E731
    accelerator = SimpleNamespace(device=torch.device("cpu"), gather=identity, gather_for_metrics=identity)
    return SimpleNamespace(
        model=model, accelerator=accelerator, aux_loss_enabled=False, precompute_ref_logps=True,
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1, **settings,
    )


def masks(token_counts: torch.Tensor) -> torch.Tensor:
    """completion_mask rows with n_i ones after a one-token prompt."""
    m = torch.zeros(len(token_counts), T + 1, dtype=torch.long)
    for i, n in enumerate(token_counts.long().tolist()):
        m[i, 1 : 1 + n] = 1
    return m


def trl_dpo(x: dict, loss_type: str, beta: float) -> torch.Tensor:
    from trl.trainer.dpo_trainer import DPOTrainer

    logps = torch.cat([x["pc"], x["pr"]])
    completion_mask = masks(torch.cat([x["nc"], x["nr"]]))
    model = StandInModel(logps, T)
    trainer = stand_in_trainer(
        model, ld_alpha=None, f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0],
        beta=beta, use_weighting=False, label_smoothing=0.0,
    )
    inputs = {
        "input_ids": torch.zeros(2 * B, T + 1, dtype=torch.long),
        "attention_mask": torch.ones(2 * B, T + 1, dtype=torch.long),
        "completion_mask": completion_mask, "ref_chosen_logps": x["rc"], "ref_rejected_logps": x["rr"],
    }
    return DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dpo_sigmoid_equals_trl(seed):
    x = random_logps(seed)
    ours = dpo_loss(x["pc"], x["pr"], x["rc"], x["rr"], beta=0.05).mean()
    assert ours.item() == pytest.approx(trl_dpo(x, "sigmoid", 0.05).item(), abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ipo_equals_trl(seed):
    x = random_logps(seed)
    ours = ipo_loss(x["pc"], x["pr"], x["rc"], x["rr"], beta=0.1, chosen_tokens=x["nc"], rejected_tokens=x["nr"]).mean()
    assert ours.item() == pytest.approx(trl_dpo(x, "ipo", 0.1).item(), abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kto_equals_trl(seed):
    from trl.trainer.kto_trainer import KTOTrainer

    x = random_logps(seed)
    x["pkl"] = x["rkl"] + torch.linspace(-0.5, 3.0, B, dtype=torch.float64)  # a positive mean KL
    model = StandInModel(torch.cat([x["pc"], x["pr"]]), T)
    trainer = stand_in_trainer(
        model, calculate_KL=True, loss_type="kto", beta=0.1, desirable_weight=1.0, undesirable_weight=1.33,
        _compute_kl_logps=lambda model, batch: x["pkl"],
    )
    batch = {
        "input_ids": torch.zeros(2 * B, T + 1, dtype=torch.long),
        "attention_mask": torch.ones(2 * B, T + 1, dtype=torch.long),
        "completion_mask": masks(torch.cat([x["nc"], x["nr"]])), "label": torch.tensor([True] * B + [False] * B),
        "ref_logps": torch.cat([x["rc"], x["rr"]]), "ref_KL_logps": x["rkl"],
    }
    theirs = KTOTrainer._compute_loss(trainer, model, batch, return_outputs=False)
    kl = kto_kl(x["pkl"], x["rkl"])
    ours = kto_loss(x["pc"], x["pr"], x["rc"], x["rr"], beta=0.1, kl=kl, desirable_weight=1.0,
                    undesirable_weight=1.33).mean()
    assert kl.item() > 0
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_orpo_odds_ratio_term_equals_trl(seed):
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    x = random_logps(seed)
    chosen, rejected = x["pc"] / x["nc"], x["pr"] / x["nr"]  # ORPO works on length-averaged log-probs
    trainer = SimpleNamespace(beta=0.1, accelerator=SimpleNamespace(device=torch.device("cpu")))
    theirs = ORPOTrainer.odds_ratio_loss(trainer, chosen, rejected)[0]
    ours = orpo_loss(x["pc"], x["pr"], x["nc"], x["nr"], orpo_lambda=0.1)
    # ours = chosen NLL - lambda * log sigmoid(log odds); TRL's term is lambda * log sigmoid(log odds)
    assert torch.allclose(ours - (-chosen), -theirs.double(), atol=1e-6)


def test_hard_filter_by_hand():
    logps = [torch.tensor([-5.0, -5.0, -5.0]), torch.tensor([-7.0, -7.0, -7.0]), torch.tensor([-6.0] * 3),
             torch.tensor([-6.5] * 3)]
    keep = semantic_filter(torch.tensor([0.1, 0.3, 0.30001]), tau=0.3)  # the hard filter is DPO weighted by 1{d <= tau}
    loss = sem_dpo_loss(*logps, beta=0.1, semantic_weight=keep.float())
    one = math.log1p(math.exp(-0.15))  # -log sigmoid(0.1 * 1.5)
    assert loss.tolist() == pytest.approx([one, one, 0.0], abs=1e-7)


def test_additive_by_hand():
    # margin 1.5, beta 0.1, fidelity gap 0.2 * coefficient 2 -> -log sigmoid(0.15 - 0.4)
    loss = additive_loss(torch.tensor([-5.0]), torch.tensor([-7.0]), torch.tensor([-6.0]), torch.tensor([-6.5]),
                         beta=0.1, fidelity_margin=torch.tensor([0.2]), coefficient=2.0)
    assert loss.item() == pytest.approx(math.log1p(math.exp(0.25)), abs=1e-7)
    plain = additive_loss(torch.tensor([-5.0]), torch.tensor([-7.0]), torch.tensor([-6.0]), torch.tensor([-6.5]),
                          beta=0.1, fidelity_margin=torch.tensor([0.2]), coefficient=0.0)
    assert plain.item() == pytest.approx(dpo_loss(torch.tensor([-5.0]), torch.tensor([-7.0]), torch.tensor([-6.0]),
                                                  torch.tensor([-6.5]), 0.1).item())


def test_sem_dpo_by_hand():
    loss = sem_dpo_loss(torch.tensor([-5.0]), torch.tensor([-7.0]), torch.tensor([-6.0]), torch.tensor([-6.5]),
                        beta=0.1, semantic_weight=torch.tensor([math.exp(-4 * 0.2)]))
    assert loss.item() == pytest.approx(math.exp(-0.8) * math.log1p(math.exp(-0.15)), abs=1e-7)


def test_beta_dpo_by_hand():
    # margins of the four pairs: 1, 2, 3, 6 (policy chosen logps shifted, everything else 0)
    pc = torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=torch.float64)
    zeros = torch.zeros(4, dtype=torch.float64)
    method = BetaDPO(beta=0.1, alpha=0.5, rho=1.0, momentum=0.9)
    losses, mask, beta = method.loss(pc, zeros, zeros, zeros)
    # first batch: M_0 = mean = 3, sigma = population std; all kept; beta = 0.1 * (1 + 0.5 * (3 - 3))
    assert method.m0 == 3.0 and method.sigma == pytest.approx(math.sqrt(3.5))
    assert beta == pytest.approx(0.1) and mask.tolist() == [1, 1, 1, 1]
    assert losses.tolist() == pytest.approx([math.log1p(math.exp(-0.1 * m)) for m in (1, 2, 3, 6)])
    # second batch: margins all 5 -> M_0 = 0.9 * 3 + 0.1 * 5 = 3.2, beta = 0.1 * (1 + 0.5 * (5 - 3.2)) = 0.19
    losses, _, beta = method.loss(torch.full((4,), 5.0, dtype=torch.float64), zeros, zeros, zeros)
    assert method.m0 == pytest.approx(3.2) and beta == pytest.approx(0.19)
    assert losses.tolist() == pytest.approx([math.log1p(math.exp(-0.19 * 5))] * 4)


def test_beta_dpo_filter_keeps_rho_of_the_batch_and_prefers_typical_margins():
    method = BetaDPO(beta=0.1, alpha=0.0, rho=0.5, momentum=0.9)
    margins = torch.tensor([0.0, 0.1, -0.1, 0.05, 50.0, -50.0, 0.02, 80.0], dtype=torch.float64)
    zeros = torch.zeros(8, dtype=torch.float64)
    method.m0, method.sigma = 0.0, 0.5  # a history centred at 0
    method.momentum = 1.0  # freeze the history for this check
    losses, mask, _ = method.loss(margins, zeros, zeros, zeros)
    assert int(mask.sum()) == 4
    assert mask[[4, 5, 7]].sum() == 0  # the outliers are filtered out
    kept = mask.bool()
    # the plain mean of the returned losses is the mean over kept pairs
    assert losses.mean().item() == pytest.approx((-torch.nn.functional.logsigmoid(0.1 * margins[kept])).mean().item())


def test_dpo_logits_sign():
    assert dpo_logits(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]),
                      torch.tensor([-2.0])).item() == 2.0
