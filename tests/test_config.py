"""Config files: defaults, the paper's values, unknown keys and overrides."""

from pathlib import Path

import pytest

from semdpo_core.config import ConfigError, PipelineConfig, load_config
from semdpo_core.plan import plan_pipeline

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_tiny_yaml_is_the_offline_default():
    assert load_config(CONFIGS / "tiny.yaml") == PipelineConfig() == load_config(None)


def test_paper_yaml_carries_the_paper_settings():
    c = load_config(CONFIGS / "paper.yaml")
    assert (c.train.beta, c.weigh.alpha, c.train.learning_rate, c.train.batch_size, c.train.epochs) == (0.05, 4.0, 5e-6, 8, 1)
    assert (c.render.model, c.render.num_inference_steps, c.data.max_train_prompts) == ("CompVis/stable-diffusion-v1-4", 20, 50000)
    assert c.label.reward_model.kind == "image_reward"


def test_unknown_keys_are_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("weigh:\n  alpha: 2\n  alhpa: 3\n")
    with pytest.raises(ConfigError, match=r"c.yaml.*\n  weigh.alhpa: Extra inputs are not permitted"):
        load_config(path)
    with pytest.raises(ConfigError, match="trian"):
        load_config(None, ["trian.beta=0.1"])


def test_overrides_parse_values_and_change_only_downstream_fingerprints():
    base = load_config(None)
    changed = load_config(None, ["weigh.alpha=2", "evaluate.methods=[human, sem_dpo]"])
    assert changed.weigh.alpha == 2.0 and changed.evaluate.methods == ["human", "sem_dpo"]
    a, b = plan_pipeline(base), plan_pipeline(load_config(None, ["weigh.alpha=2"]))
    same = [s for s in ("prompts", "sft", "candidates", "render", "label", "pairs") if a[s] == b[s]]
    assert same == ["prompts", "sft", "candidates", "render", "label", "pairs"]
    assert a["weigh"] != b["weigh"] and a["evaluate"] != b["evaluate"]
    assert a["train"]["dpo"] == b["train"]["dpo"] and a["train"]["sem_dpo"] != b["train"]["sem_dpo"]


def test_evaluating_an_untrained_method_is_an_error():
    with pytest.raises(ConfigError, match=r"evaluate.methods \['dpo'\] are not in train.methods"):
        load_config(None, ["train.methods=[sem_dpo]"])
