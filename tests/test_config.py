"""Config files: defaults, the paper's values, unknown keys and overrides."""

from pathlib import Path

import pytest

from semdpo_core.pipeline.config import ConfigError, PipelineConfig, load_config
from semdpo_core.pipeline.plan import plan_pipeline

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_world_yaml_is_the_offline_default():
    assert load_config(CONFIGS / "world.yaml") == PipelineConfig() == load_config(None)
    c = load_config(None)
    assert (c.render.model, c.label.reward_model.model, c.sft.base_model) == ("world:renderer", "world:aesthetic",
                                                                              "tiny:world-rewriter")
    assert set(c.evaluate.scorers) == {"alignment", "aesthetic", "pick"}  # named for what they are, never CLIP or HPS


def test_tiny_yaml_runs_the_real_architectures():
    c = load_config(CONFIGS / "tiny.yaml")
    assert (c.render.model, c.sft.base_model, c.label.reward_model.kind) == ("tiny:stable-diffusion", "tiny:rewriter",
                                                                             "image_reward")
    assert {s.kind for s in c.evaluate.scorers.values()} == {"clip", "hpsv2", "pickscore", "image_reward"}


def test_paper_yaml_carries_the_paper_settings():
    c = load_config(CONFIGS / "paper.yaml")
    assert ((c.train.beta, c.train.alpha, c.train.learning_rate, c.train.batch_size, c.train.epochs)
            == (0.05, 4.0, 5e-6, 8, 1))
    assert ((c.render.model, c.render.num_inference_steps, c.data.max_train_prompts)
            == ("CompVis/stable-diffusion-v1-4", 20, 50000))
    assert c.label.reward_model.kind == "image_reward"


def test_unknown_keys_are_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  alpha: 2\n  alhpa: 3\n")
    with pytest.raises(ConfigError, match=r"c.yaml.*\n  train: unknown setting train.alhpa"):
        load_config(path)
    with pytest.raises(ConfigError, match="trian"):
        load_config(None, ["trian.beta=0.1"])


UPSTREAM = ("prompts", "sft", "candidates", "render", "label", "pairs", "weigh", "reference")


def test_overrides_parse_values_and_a_new_alpha_changes_only_sem_dpo_and_evaluation():
    changed = load_config(None, ["train.alpha=2", "evaluate.methods=[human, sem_dpo]"])
    assert changed.train.alpha == 2.0 and changed.evaluate.methods == ["human", "sem_dpo"]
    a, b = plan_pipeline(load_config(None)), plan_pipeline(load_config(None, ["train.alpha=2"]))
    assert [s for s in UPSTREAM if a.ref(s) == b.ref(s)] == list(UPSTREAM)
    assert [m for m in a.train if a.train[m] != b.train[m]] == ["sem_dpo"]
    assert a.ref("evaluate") != b.ref("evaluate")


def test_a_method_setting_retrains_only_that_method():
    a, b = plan_pipeline(load_config(None)), plan_pipeline(load_config(None, ["train.kto.undesirable_weight=1.5"]))
    assert [m for m in a.train if a.train[m] != b.train[m]] == ["kto"]


def test_compiling_the_unet_reuses_the_images_and_a_new_image_size_does_not():
    base = plan_pipeline(load_config(None))
    assert plan_pipeline(load_config(None, ["render.compile=true"])).outputs() == base.outputs()
    resized = plan_pipeline(load_config(None, ["render.height=128"]))
    assert resized.ref("render") != base.ref("render") and resized.ref("evaluate") != base.ref("evaluate")
    assert resized.ref("candidates") == base.ref("candidates")


def test_alpha_sweep_plans_one_sem_dpo_run_per_alpha_on_shared_upstream():
    sweep = plan_pipeline(load_config(None, ["train.alpha=[1, 4, 8]", "train.methods=[dpo, sem_dpo]"]))
    assert list(sweep.train) == ["dpo", "sem_dpo@alpha=1", "sem_dpo@alpha=4", "sem_dpo@alpha=8"]
    assert sweep.evaluated == ("human", "sft", "dpo", "sem_dpo@alpha=1", "sem_dpo@alpha=4", "sem_dpo@alpha=8")
    single = plan_pipeline(load_config(None, ["train.methods=[dpo, sem_dpo]"]))
    assert [s for s in UPSTREAM if sweep.ref(s) == single.ref(s)] == list(UPSTREAM)
    assert sweep.train["sem_dpo@alpha=4"] == single.train["sem_dpo"]  # the same run, reused


def test_orpo_alone_needs_no_reference_stage_and_only_additive_needs_fidelity():
    plan = plan_pipeline(load_config(None, ["train.methods=[orpo]"]))
    assert not plan.has("reference") and not plan.has("fidelity") and list(plan.train) == ["orpo"]
    plan = plan_pipeline(load_config(None))
    assert plan.has("reference") and plan.has("fidelity")


def test_every_setting_the_reference_stage_reads_changes_its_fingerprint():
    """The reference task reads train.batch_size, max_length and precision: each must be hashed, or a
    changed value would silently reuse log-probs computed under the old one."""
    base = plan_pipeline(load_config(None)).ref("reference")
    for override in ("train.batch_size=4", "train.max_length=64", "train.precision=bf16"):
        assert plan_pipeline(load_config(None, [override])).ref("reference") != base, override
    assert plan_pipeline(load_config(None, ["train.beta=0.1"])).ref("reference") == base  # a setting it does not read


def test_evaluating_an_untrained_method_is_an_error():
    with pytest.raises(ConfigError, match=r"evaluate.methods \['dpo'\] are not in train.methods"):
        load_config(None, ["train.methods=[sem_dpo]", "evaluate.methods=[human, dpo]"])


def test_a_cluster_with_a_store_on_this_machines_disk_is_refused_before_anything_runs(tmp_path, monkeypatch):
    cluster = ["runner.kind=ray", "runner.address=ray://head:10001"]
    monkeypatch.setenv("SEMDPO_STORE", str(tmp_path / "store"))
    with pytest.raises(ConfigError, match=r"runner.address 'ray://head:10001' is a Ray cluster, but the store "
                                          r".*store' .* is a path on this machine's disk.*s3://.*runner.shared_store"):
        load_config(None, cluster)
    assert load_config(None, [*cluster, "store=s3://bucket/semdpo"]).runner.is_cluster()  # every node reaches S3
    assert load_config(None, [*cluster, "runner.shared_store=true"]).runner.shared_store  # vouched for: a shared mount
    assert not load_config(None, ["runner.kind=ray"]).runner.is_cluster()  # Ray started here: one disk
    with pytest.raises(ConfigError, match="is a Ray cluster"):
        load_config(None, ["runner.kind=ray", "runner.address=auto", f"store=file://{tmp_path}"])
