"""End to end: the Prefect flow on a very small offline config, reruns, alpha changes, bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from semdpo_core.pipeline.config import load_config
from semdpo_core.pipeline.plan import plan_pipeline
from semdpo_core.pipeline.schemas import EVALUATION, PAIRS, TRAIN_LOG
from semdpo_core.store.artifact_store import ArtifactStore
from tests.servers import final_task_states
from tests.small import SMALL

pytestmark = pytest.mark.slow



def small_config(tmp_path: Path, store: str, **extra) -> Path:
    path = tmp_path / f"small-{store}.yaml"
    path.write_text(yaml.safe_dump({**SMALL, **extra, "store": str(tmp_path / store)}))
    return path


def manifests(config_path: Path, overrides=()) -> dict[str, dict]:
    config = load_config(config_path, list(overrides))
    store = ArtifactStore(config.store_root())
    return {label: store.manifest(ref) for label, ref in plan_pipeline(config).outputs()}


def task_states(flow_run_id) -> list[str]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return final_task_states(FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def test_pipeline_runs_reruns_and_reproduces(tmp_path, prefect_server):
    from flows.pipeline import pipeline

    config = small_config(tmp_path, "a")
    state = pipeline(config_path=str(config), return_state=True)
    assert state.is_completed()
    table = state.result()
    for method in ("human", "sft", "dpo", "sem_dpo"):
        assert any(line.startswith(method) for line in table.splitlines())
    first = manifests(config)
    cfg = load_config(config)
    store, plan = ArtifactStore(cfg.store_root()), plan_pipeline(cfg)
    evaluation = store.read_table(plan.ref("evaluate"), EVALUATION)
    assert evaluation.num_rows == 4 * 4
    assert sorted(set(evaluation.column("method").to_pylist())) == ["dpo", "human", "sem_dpo", "sft"]
    assert set(evaluation.column("dataset").to_pylist()) == {"demo"}
    assert all(r["rewrite_tokens"] > 0 and r["image_drift"] > 0 for r in evaluation.to_pylist())
    report = store.read_file(plan.ref("report"), "report.md").decode()
    for heading in ("Scores per dataset", "token length", "Head to head: sem_dpo", "Proposition 2", "samples.png"):
        assert heading in report
    pairs = store.read_table(plan.ref("pairs"), PAIRS)
    assert pairs.num_rows > 0 and all(r["chosen_reward"] > r["rejected_reward"] for r in pairs.to_pylist())

    # a rerun does no work: every task Cached, every manifest untouched
    rerun = pipeline(config_path=str(config), return_state=True)
    states = task_states(rerun.state_details.flow_run_id)
    assert len(states) > len(first) and set(states) == {"Cached"}  # shard and commit tasks included
    assert manifests(config) == first
    runs = sorted((Path(cfg.store_root()) / "runs").glob("*/run.json"), key=lambda p: p.stat().st_mtime_ns)
    assert all(stage["reused"] for stage in json.loads(runs[-1].read_text())["stages"].values())

    # the same config in a fresh store: the same fingerprints and byte-identical tables
    other = small_config(tmp_path, "b")
    pipeline(config_path=str(other))
    again = manifests(other)
    assert {k: [p["sha256"] for p in m["parts"]] for k, m in again.items()} == {
        k: [p["sha256"] for p in m["parts"]] for k, m in first.items()
    }

    # a new alpha reruns only Sem-DPO training and evaluation
    pipeline(config_path=str(config), overrides=["train.alpha=1.5"])
    runs = sorted((Path(cfg.store_root()) / "runs").glob("*/run.json"), key=lambda p: p.stat().st_mtime_ns)
    stages = json.loads(runs[-1].read_text())["stages"]
    assert sorted(k for k, v in stages.items() if not v["reused"]) == ["evaluate", "report", "train:sem_dpo"]


def test_several_datasets_and_an_alpha_sweep_in_one_report(tmp_path, prefect_server):
    from flows.pipeline import pipeline
    from semdpo_core.stages.prompts import read_records

    demo = [r.fields["prompt"] for r in read_records("demo:test_prompts", ["prompt"])]
    (tmp_path / "coco.txt").write_text("\n".join(demo[:3]) + "\n")
    (tmp_path / "lexica.csv").write_text("prompt\n" + "\n".join(f'"{p}"' for p in demo[10:12]) + "\n")
    config = small_config(
        tmp_path, "multi", data={**SMALL["data"], "test_prompts": {"coco": str(tmp_path / "coco.txt"),
                                                                   "lexica": str(tmp_path / "lexica.csv")}},
        train={**SMALL["train"], "methods": ["sem_dpo"], "alpha": [0.0, 4.0], "report_to": ["tensorboard"],
               "logging_dir": str(tmp_path / "tensorboard")},
    )
    pipeline(config_path=str(config))
    cfg = load_config(config)
    store, plan = ArtifactStore(cfg.store_root()), plan_pipeline(cfg)
    rows = store.read_table(plan.ref("evaluate"), EVALUATION).select(["method", "dataset"]).to_pylist()
    methods = ["human", "sft", "sem_dpo@alpha=0", "sem_dpo@alpha=4"]
    assert sorted((r["method"], r["dataset"]) for r in rows) == sorted(
        (m, d) for m in methods for d, n in (("coco", 3), ("lexica", 2)) for _ in range(n)
    )
    files = {f["name"] for f in store.manifest(plan.ref("report"))["files"]}
    for dataset in ("coco", "lexica"):
        for y in ("hps_v21", "pick_score"):
            assert f"plots/scatter-{dataset}-clip_score-vs-{y}.png" in files
            assert f"plots/alpha-sweep-{dataset}-clip_score-vs-{y}.png" in files
    assert "Head to head: sem_dpo@alpha=0" in store.read_file(plan.ref("report"), "report.md").decode()
    assert "plots/training-curves.png" in files

    # train.report_to: every optimizer step of every run in TensorBoard, as in the run's own log
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for label in ("sem_dpo@alpha=0", "sem_dpo@alpha=4"):
        ref = plan.train[label]
        events = EventAccumulator(str(tmp_path / "tensorboard" / f"{label}-{ref.fingerprint}")).Reload()
        logged = store.read_table(ref, TRAIN_LOG).column("loss").to_pylist()
        scalars = events.Scalars("train/loss")
        assert [e.step for e in scalars] == list(range(1, len(logged) + 1))
        assert [e.value for e in scalars] == pytest.approx(logged, rel=1e-6)  # float32 in the event file


def test_bad_prompt_file_stops_the_run_before_any_stage(tmp_path):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "a red fox"}\n{"prompt": "an owl",}\n')
    config = small_config(tmp_path, "bad", data={**SMALL["data"], "train_prompts": str(bad)})
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", str(config)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2
    assert f"{bad}:2: malformed JSON" in result.stderr
    assert "Starting temporary server" not in result.stdout + result.stderr  # stopped before Prefect started
    assert not any((tmp_path / "bad").glob("*/*/_manifest.json"))


def test_alpha_auto_chooses_on_validation_prompts_held_out_of_training(tmp_path, prefect_server):
    """train.alpha: auto trains the grid, scores each run on training prompts held out of training,
    and the report compares the run it chose (head to head) beside the alpha best on test."""
    from flows.pipeline import pipeline
    from semdpo_core.pipeline.schemas import CANDIDATES, PROMPTS

    config = small_config(tmp_path, "auto", data={**SMALL["data"], "max_train_prompts": 6},
                          train={**SMALL["train"], "methods": ["dpo", "sem_dpo"], "alpha": "auto",
                                 "alpha_grid": [0.0, 4.0], "validation_prompts": 3})
    pipeline(config_path=str(config))
    cfg = load_config(config)
    store, plan = ArtifactStore(cfg.store_root()), plan_pipeline(cfg)
    prompts = store.read_table(plan.ref("prompts"), PROMPTS).to_pylist()
    split = {s: {r["prompt_id"] for r in prompts if r["split"] == s} for s in ("train", "validation", "test")}
    assert len(split["validation"]) == 3 and len(split["train"]) == 6
    assert not split["validation"] & (split["train"] | split["test"])
    trained_on = set(store.read_table(plan.ref("candidates"), CANDIDATES).column("prompt_id").to_pylist())
    assert trained_on <= split["train"]  # the validation prompts never reach candidates, pairs or training
    validation = store.read_table(plan.ref("validate"), EVALUATION).select(["method", "prompt_id"]).to_pylist()
    assert {r["method"] for r in validation} == {"sem_dpo@alpha=0", "sem_dpo@alpha=4"}
    assert {r["prompt_id"] for r in validation} == split["validation"]
    tables = json.loads(store.read_file(plan.ref("report"), "report.json"))
    selection = tables["alpha_selection"]
    assert [r["alpha"] for r in selection["by_alpha"]] == [0.0, 4.0]
    best = max(selection["by_alpha"], key=lambda r: r["validation"])
    assert selection["chosen"] == best["method"] == tables["focus"]
    assert "Alpha chosen on the validation prompts" in store.read_file(plan.ref("report"), "report.md").decode()


@pytest.mark.parametrize("render_seed", ["per_prompt", "per_candidate"])
def test_a_prompts_candidates_share_their_render_seed_unless_told_otherwise(render_seed):
    import torch

    from semdpo_core.models.loading import load_rewriter
    from semdpo_core.stages.candidates import sample_candidates

    model, tokenizer = load_rewriter("tiny:rewriter", torch.device("cpu"))
    table = sample_candidates(model, tokenizer, ["p1", "p2"], ["a red fox", "an old lighthouse"], num_candidates=3,
                              temperature=1.0, top_p=1.0, max_new_tokens=8, batch_size=2, seed=0,
                              render_seed=render_seed)
    seeds: dict[str, set[int]] = {}
    for row in table.to_pylist():
        seeds.setdefault(row["prompt_id"], set()).add(row["seed"])
    per_prompt = [len(s) for s in seeds.values()]
    assert per_prompt == ([1, 1] if render_seed == "per_prompt" else [3, 3])
    assert not seeds["p1"] & seeds["p2"]  # different prompts, different noise


def test_several_backbones_run_in_turn_and_share_one_report(tmp_path, prefect_server):
    from typer.testing import CliRunner

    from flows.cli import app
    from flows.pipeline import pipeline
    from semdpo_core.pipeline.schemas import REPORT_SCORES

    config = small_config(tmp_path, "backbones", sft={**SMALL["sft"], "backbones": ["tiny:gpt2"]})
    pipeline(config_path=str(config))
    cfg = load_config(config)
    store = ArtifactStore(cfg.store_root())
    backbones = cfg.backbone_configs()
    assert list(backbones) == ["tiny:rewriter", "tiny:gpt2"]
    # each backbone is the config naming that base model alone: the same outputs, found in the store
    alone = load_config(config, ["sft.base_model=tiny:gpt2", "sft.backbones=[]"])
    assert plan_pipeline(alone).outputs() == plan_pipeline(backbones["tiny:gpt2"]).outputs()
    assert plan_pipeline(backbones["tiny:rewriter"]).ref("sft") != plan_pipeline(alone).ref("sft")

    result = CliRunner().invoke(app, ["report", str(config), "--out", str(tmp_path / "side-by-side")])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "side-by-side/report.md").read_text()
    assert "## tiny:rewriter" in text and "## tiny:gpt2" in text and "| method | tiny:rewriter | tiny:gpt2 |" in text
    combined = pq.read_table(tmp_path / "side-by-side/scores.parquet").to_pylist()
    for backbone, one in backbones.items():
        # a backbone's block is its own report's scores: normalised within (dataset, backbone)
        own = store.read_table(plan_pipeline(one).ref("report"), REPORT_SCORES).to_pylist()
        block = [{k: v for k, v in r.items() if k != "backbone"} for r in combined if r["backbone"] == backbone]
        assert block == own
        assert (tmp_path / f"side-by-side/plots/scatter-{backbone.replace(':', '-')}"
                           "-demo-clip_score-vs-hps_v21.png").exists()
    # a backbone not evaluated yet is named
    result = CliRunner().invoke(app, ["report", str(config), "--set", "sft.backbones=[tiny:llama]"])
    assert result.exit_code == 2 and "tiny:llama not evaluated" in result.output
