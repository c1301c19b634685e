"""configs/paper.yaml from a Hugging Face cache (issue 15): with tiny checkpoints of the real
architectures and file layouts under every hub id the config names, `HF_HUB_OFFLINE=1`, and only
sizes and data overridden, the paper's configuration runs end to end; so do the paper's other
backbones (GPT-2 and Llama 3.2, whose tokenizers have no pad token). `semdpo check` names what a
cache lacks and the command that fetches it, and `semdpo run` refuses to start without it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from semdpo_core.models.needs import needs_listing
from semdpo_core.pipeline.config import load_config
from semdpo_core.pipeline.plan import plan_pipeline
from semdpo_core.store.artifact_store import ArtifactStore
from tests.hub_cache import paper_hub_cache

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "configs" / "paper.yaml"
DATA = ["data.train_prompts=demo:train_prompts", "data.test_prompts=demo:test_prompts", "data.sft_pairs=demo:sft_pairs",
        "data.max_train_prompts=8", "data.max_test_prompts=4"]
SIZES = [
    "device=auto", "shard_size=4", "sft.epochs=1", "sft.max_length=96", "sft.check_max_new_tokens=12",
    "candidates.max_new_tokens=12", "render.num_inference_steps=2", "render.height=64", "render.width=64",
    "train.max_length=96", "evaluate.max_new_tokens=12",
    "evaluate.scorers.hps_v21.architecture=semdpo-tiny-vit",  # the tiny HPSv2 checkpoint's open_clip config
]


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Path:
    return paper_hub_cache(tmp_path_factory.mktemp("hf") / "hub")


def semdpo(command: str, overrides: list[str], hub: Path, store: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "SEMDPO_STORE": str(store)}
    args = [sys.executable, "-m", "flows.cli", command, str(PAPER)] + [f"--set={o}" for o in overrides]
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1200)


def outputs(overrides: list[str], store: Path) -> tuple[list[str], ArtifactStore, object]:
    config = load_config(PAPER, overrides + [f"store={store}"])
    plan = plan_pipeline(config)
    return [label for label, _ in plan.outputs()], ArtifactStore(config.store_root()), plan


def test_paper_yaml_lists_every_model_it_needs():
    """The list in paper.yaml's header is the one `semdpo check` works from."""
    listed = [line.removeprefix("#   ") for line in PAPER.read_text().splitlines() if line.startswith("#   ")]
    assert listed == needs_listing(load_config(PAPER, DATA)) and len(listed) == 8


def test_check_names_what_an_empty_cache_lacks_and_run_refuses_to_start(tmp_path):
    empty = tmp_path / "empty-hub"
    empty.mkdir()
    result = semdpo("check", DATA + SIZES, empty, tmp_path / "store")
    assert result.returncode == 1
    assert "label.reward_model.model" in result.stdout and "12 missing" in result.stdout
    assert "hf download THUDM/ImageReward ImageReward.pt med_config.json" in result.stdout
    run = semdpo("run", DATA + SIZES, empty, tmp_path / "store")
    assert run.returncode == 2 and "sft.base_model: Qwen/Qwen1.5-1.8B (not here)" in run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "store").exists()  # refused before any stage


def test_paper_config_runs_end_to_end_from_the_hub_cache(hub, tmp_path):
    check = semdpo("check", DATA + SIZES, hub, tmp_path / "store")
    assert check.returncode == 0 and "every model is here" in check.stdout, check.stdout
    result = semdpo("run", DATA + SIZES, hub, tmp_path / "store")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    labels, store, plan = outputs(DATA + SIZES, tmp_path / "store")
    assert all(store.is_committed(plan.ref(label)) for label in labels)
    assert [m for m in labels if m.startswith("train:")] == [f"train:{m}" for m in load_config(PAPER).train.methods]
    tables = json.loads(store.read_file(plan.ref("report"), "report.json"))
    assert tables["methods"] == ["human", "sft", "dpo", "sem_dpo", "ipo", "kto", "orpo", "beta_dpo", "hard_filter",
                                 "additive"]
    assert tables["drift"]["methods"]  # Proposition 2 measured in the CLIP score model's space
    for metric in ("clip_score", "hps_v21", "pick_score", "image_reward"):
        assert metric in result.stdout


@pytest.mark.parametrize("backbone", ["gpt2", "meta-llama/Llama-3.2-1B"])
def test_the_papers_other_backbones_run_from_the_hub_cache(hub, tmp_path, backbone):
    overrides = DATA + SIZES + [f"sft.base_model={backbone}", "train.methods=[dpo, sem_dpo]"]
    result = semdpo("run", overrides, hub, tmp_path / "store")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    labels, store, plan = outputs(overrides, tmp_path / "store")
    assert all(store.is_committed(plan.ref(label)) for label in labels)
    files = {f["name"] for f in store.manifest(plan.train["sem_dpo"])["files"]}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
