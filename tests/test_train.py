"""The preference trainer: a run stopped mid-epoch resumes from its checkpoint and ends where an
uninterrupted run ends."""

import torch

from semdpo_core.config import TrainConfig
from semdpo_core.models import load_rewriter
from semdpo_core.train import PreferenceData, reference_logps, train_preference

DATA = PreferenceData(
    prompts=[f"a red fox number {i}" for i in range(12)],
    chosen=[f"a red fox number {i}, golden hour, highly detailed" for i in range(12)],
    rejected=[f"a blue car {i}, 4k" for i in range(12)],
    semantic_weight=[0.5 + i / 24 for i in range(12)],
)
SETTINGS = dict(method="sem_dpo", beta=0.1, learning_rate=1e-3, batch_size=4, epochs=2, max_length=64, seed=7)


class Crash(Exception):
    pass


def test_stopped_training_resumes_from_the_last_checkpoint_exactly():
    cpu = torch.device("cpu")
    reference, tokenizer = load_rewriter("tiny:rewriter", cpu)
    ref_chosen, ref_rejected = reference_logps(reference, tokenizer, DATA, 4, 64)

    full, _ = load_rewriter("tiny:rewriter", cpu)
    full_history = train_preference(full, tokenizer, DATA, ref_chosen, ref_rejected, **SETTINGS)
    assert len(full_history) == 6

    saved = {}

    def save_then_crash(step, files):
        saved[step] = files
        if step == 4:  # mid second epoch: 3 steps per epoch
            raise Crash

    crashed, _ = load_rewriter("tiny:rewriter", cpu)
    try:
        train_preference(crashed, tokenizer, DATA, ref_chosen, ref_rejected, checkpoint_every=2, save_checkpoint=save_then_crash, **SETTINGS)
    except Crash:
        pass
    assert sorted(saved) == [2, 4]

    resumed, _ = load_rewriter("tiny:rewriter", cpu)
    history = train_preference(resumed, tokenizer, DATA, ref_chosen, ref_rejected, resume_from=saved[4], **SETTINGS)
    assert [h["step"] for h in history] == list(range(6))
    assert [h["loss"] for h in history] == [h["loss"] for h in full_history]
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    assert not torch.equal(full.state_dict()["transformer.h.0.attn.c_attn.weight"], reference.state_dict()["transformer.h.0.attn.c_attn.weight"])


def test_checkpoint_interval_does_not_change_train_fingerprints():
    from semdpo_core.config import load_config
    from semdpo_core.plan import plan_pipeline

    a = plan_pipeline(load_config(None))["train"]
    b = plan_pipeline(load_config(None, ["train.checkpoint_every=100"]))["train"]
    assert a == b and TrainConfig().checkpoint_every == 4
