"""The preference trainer: every method trains; a run stopped mid-epoch resumes from its
checkpoint and ends exactly where an uninterrupted run ends; accumulation and the schedule."""

import pytest
import torch

from semdpo_core.models.loading import load_rewriter
from semdpo_core.models.rewriter import completion_logps, concatenated_logps
from semdpo_core.pipeline.config import TrainConfig, load_config
from semdpo_core.pipeline.plan import plan_pipeline
from semdpo_core.preference.optim import warmup_then_linear_decay
from semdpo_core.stages.reference import reference_logps
from semdpo_core.stages.train import PreferenceData, kish_effective_size, train_preference

CPU = torch.device("cpu")
DATA = PreferenceData(
    prompts=[f"a red fox number {i}" for i in range(12)],
    chosen=[f"a red fox number {i}, golden hour, highly detailed" for i in range(12)],
    rejected=[f"a blue car {i}, 4k" for i in range(12)],
    semantic_distance=[0.05 * i for i in range(12)],
    fidelity_margin=[0.01 * (i % 5) - 0.02 for i in range(12)],
)
SETTINGS = TrainConfig(learning_rate=1e-3, batch_size=4, epochs=2, max_length=64, beta=0.1, checkpoint_every=2,
                       hard_filter={"tau": 0.32})


@pytest.fixture(scope="module")
def reference():
    model, tokenizer = load_rewriter("tiny:rewriter", CPU)
    return (reference_logps(model, tokenizer, DATA.prompts, DATA.chosen, DATA.rejected, DATA.kl_completions(), 4, 64),
            tokenizer)


class Crash(Exception):
    pass


def train(method, reference, settings=SETTINGS, dropout=True, **kwargs):
    """Train the tiny rewriter; `dropout` keeps the model's dropout on (train.disable_dropout off),
    so that resuming is checked with dropout masks drawn from the saved RNG state too."""
    ref, tokenizer = reference
    policy, _ = load_rewriter("tiny:rewriter", CPU)
    settings = settings.model_copy(update={"disable_dropout": not dropout})
    history = train_preference(policy, tokenizer, DATA, ref, method=method, settings=settings, seed=7,
                               checkpoint_every=settings.checkpoint_every, **kwargs)
    return policy, history


@pytest.mark.parametrize("method", ["dpo", "sem_dpo", "ipo", "kto", "orpo", "beta_dpo", "hard_filter", "additive"])
def test_every_method_trains_and_resumes_exactly(method, reference):
    full, full_history = train(method, reference)
    assert len(full_history) == 6 and all(torch.isfinite(torch.tensor(h["loss"])) for h in full_history)
    start, _ = load_rewriter("tiny:rewriter", CPU)
    assert any(not torch.equal(a, b) for a, b in zip(full.parameters(), start.parameters())), "the policy moved"

    saved = {}

    def save_then_crash(step, files):
        saved[step] = files
        if step == 4:  # in the second epoch (3 steps per epoch)
            raise Crash

    with pytest.raises(Crash):
        train(method, reference, save_checkpoint=save_then_crash)
    assert sorted(saved) == [2, 4]
    resumed, history = train(method, reference, resume_from=saved[4])
    assert [h["step"] for h in history] == list(range(6))
    assert [h["loss"] for h in history] == [h["loss"] for h in full_history]
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def test_method_specific_metrics(reference):
    _, sem = train("sem_dpo", reference)
    _, hard = train("hard_filter", reference)
    _, beta = train("beta_dpo", reference)
    weights = torch.exp(-4.0 * torch.tensor(DATA.semantic_distance))
    assert sum(h["mean_weight"] for h in sem) * 4 == pytest.approx(2 * weights.sum().item(), rel=1e-6)
    # unequal weights are worth fewer than the step's 4 pairs, never fewer than one
    assert all(1 < h["effective_sample_size"] < 4 for h in sem)
    # 0/1 weights are worth the pairs they keep: d = 0.05 i <= 0.32 for pairs 0..6, twice (2 epochs)
    assert sum(h["effective_sample_size"] for h in hard) == pytest.approx(2 * 7)
    assert all(h["effective_sample_size"] == pytest.approx(3) for h in beta)  # rho = 0.8 of 4 pairs
    assert len({round(h["beta"], 9) for h in beta}) > 1  # beta changes from batch to batch


def test_gradient_accumulation_matches_one_big_batch(reference):
    one = TrainConfig(learning_rate=1e-3, batch_size=4, epochs=1, max_length=64, warmup_ratio=0.0)
    two = TrainConfig(learning_rate=1e-3, batch_size=2, gradient_accumulation_steps=2, epochs=1, max_length=64,
                      warmup_ratio=0.0)
    a, ha = train("dpo", reference, settings=one, dropout=False)
    b, hb = train("dpo", reference, settings=two, dropout=False)
    assert len(ha) == len(hb) == 3
    assert [h["loss"] for h in ha] == pytest.approx([h["loss"] for h in hb], rel=1e-5)
    # float32 sums in another order; Adam's normalised step turns that into up to ~2e-6 on rarely
    # used embedding rows (1.7e-6 measured on one CPU), far below one step's size (lr 1e-3)
    for x, y in zip(a.parameters(), b.parameters()):
        assert torch.allclose(x, y, atol=1e-5)


def test_warmup_then_linear_decay():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = warmup_then_linear_decay(optimizer, warmup_steps=2, total_steps=6)
    rates = []
    for _ in range(6):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([1 / 3, 2 / 3, 1.0, 0.75, 0.5, 0.25])


def test_checkpoint_interval_does_not_change_train_fingerprints():
    a = plan_pipeline(load_config(None)).train
    b = plan_pipeline(load_config(None, ["train.checkpoint_every=100"])).train
    assert a == b


def test_one_concatenated_forward_gives_each_sets_log_probs():
    model, tokenizer = load_rewriter("tiny:rewriter", CPU)
    prompts = DATA.prompts[:3]
    sets = {"chosen": DATA.chosen[:3], "rejected": DATA.rejected[:3], "kl": DATA.chosen[3:6]}
    with torch.no_grad():
        together = concatenated_logps(model, tokenizer, prompts, sets, 64)
        for name, completions in sets.items():
            logps, tokens = completion_logps(model, tokenizer, prompts, completions, 64)
            torch.testing.assert_close(together[name][0], logps, atol=1e-5, rtol=0)
            assert torch.equal(together[name][1], tokens)
    assert not torch.allclose(together["chosen"][0], together["rejected"][0])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_follows_float32(precision, reference):
    """The GPU's autocast paths (bf16; fp16 with loss scaling), run here on CPU: the same losses as
    float32 to mixed-precision rounding, and the policy moves."""
    settings = SETTINGS.model_copy(update={"checkpoint_every": 0})
    _, fp32 = train("sem_dpo", reference, settings, dropout=False)
    policy, mixed = train("sem_dpo", reference, settings.model_copy(update={"precision": precision}), dropout=False)
    losses, expected = [h["loss"] for h in mixed], [h["loss"] for h in fp32]
    assert losses != expected  # autocast really ran in reduced precision
    assert losses == pytest.approx(expected, rel=0.05, abs=1e-3)
    start, _ = load_rewriter("tiny:rewriter", CPU)
    assert any(not torch.equal(a, b) for a, b in zip(policy.parameters(), start.parameters()))


def test_sft_in_mixed_precision_follows_float32():
    """SFT's autocast path (bf16, the GPU default) run on CPU: the float32 losses, to rounding."""
    from semdpo_core.stages.sft import train_sft

    def losses(precision: str) -> list[float]:
        model, tokenizer = load_rewriter("tiny:rewriter", CPU)
        history = train_sft(model, tokenizer, DATA.prompts, DATA.chosen, epochs=1, learning_rate=1e-3, batch_size=4,
                            max_length=64, seed=3, precision=precision)
        return [h["loss"] for h in history]

    fp32, bf16 = losses("fp32"), losses("bf16")
    assert len(fp32) == 3 and fp32[-1] < fp32[0]
    assert bf16 != fp32 and bf16 == pytest.approx(fp32, rel=0.03)


def test_with_dropout_in_the_model_the_policy_starts_exactly_at_the_reference(reference):
    """TRL's disable_dropout: the reference pass runs in eval mode, the policy trains in train mode;
    with the model's dropout (GPT-2's 0.1) left on, their log-probs differ at step 0."""
    from semdpo_core.stages.train import disable_dropout

    ref, tokenizer = reference
    policy, _ = load_rewriter("tiny:rewriter", CPU)
    assert {m.p for m in policy.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}
    first = slice(0, 4)  # the reference's first batch, as it was padded
    completions = {"chosen": DATA.chosen[first], "rejected": DATA.rejected[first], "kl": DATA.kl_completions()[first]}

    def step0_logps(model):
        with torch.no_grad():
            out = concatenated_logps(model.train(), tokenizer, DATA.prompts[first], completions, 64)
        return torch.cat([out["chosen"][0], out["rejected"][0]]).double()

    expected = torch.cat([ref.chosen[first], ref.rejected[first]])
    torch.manual_seed(0)
    assert not torch.equal(step0_logps(policy), expected)  # dropout on: noise in every log-prob
    disable_dropout(policy)
    assert torch.equal(step0_logps(policy), expected)

    trained, _ = train("dpo", reference, dropout=False)  # train.disable_dropout (the default) does it
    assert {m.p for m in trained.modules() if isinstance(m, torch.nn.Dropout)} == {0.0}
    kept, _ = train("dpo", reference, dropout=True)
    assert {m.p for m in kept.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}


def test_kish_effective_size():
    assert kish_effective_size(torch.ones(8)) == pytest.approx(8)
    assert kish_effective_size(0.5 * torch.ones(8)) == pytest.approx(8)  # a constant factor is invisible
    assert kish_effective_size(torch.tensor([1.0, 0.0, 0.0, 0.0])) == pytest.approx(1)
    assert kish_effective_size(torch.tensor([1.0, 1.0, 0.5, 0.5])) == pytest.approx(9 / 2.5)  # (3)^2 / 2.5
    assert kish_effective_size(torch.zeros(4)) == 0.0
