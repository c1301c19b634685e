"""The benchmarks keep running (their measurements are read by people, never asserted), and the
GPU-hours projection counts the work of every stage of the run it projects."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_train_speed_benchmark_runs_and_reports_ratios(tmp_path):
    out = tmp_path / "train_speed.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/train_speed.py", "--steps", "8", "--batch-size", "4", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"ours:dpo", "ours:sem_dpo", "trl:dpo"}
    assert all(r["steps"] == 8 and r["median_step_s"] > 0 and r["peak_mb"] > 0 for r in report["results"].values())
    assert "sem_dpo / dpo step time" in result.stdout


def test_gpu_throughput_benchmark_runs_on_cpu_with_tiny_models(tmp_path):
    out = tmp_path / "gpu_throughput.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu_throughput.py", "--size", "tiny", "--items", "4", "--batch-size", "2",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["stages"]) == {"candidates", "render", "image_reward", "hpsv2", "pickscore", "train"}
    for name, row in report["stages"].items():
        assert row["ours_per_s"] > 0 and row["peak_mb"] > 0, name
        if name != "train":
            assert row["ratio"] > 0 and row["baseline_per_s"] > 0, name
    assert report["projection_hours"]["total"] > 0
    assert "ratio" in result.stdout and "projected run 'paper' (50000 prompts, 2 candidates per prompt" in result.stdout


def test_the_run_projection_counts_every_stage_of_the_paper_config():
    """The GPU-hours projection: each stage's work in the paper's config, divided by its rate."""
    import importlib.util

    from semdpo_core.pipeline.config import load_config

    spec = importlib.util.spec_from_file_location("gpu_throughput", ROOT / "benchmarks" / "gpu_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rates = {"candidates": 2, "render": 4, "image_reward": 5, "hpsv2": 8, "pickscore": 10, "train": 20}
    hours = bench.projection({k: {"ours_per_s": r} for k, r in rates.items()}, load_config(ROOT / "configs/paper.yaml"))
    # 50k prompts x 2 candidates; 8 methods; 3 test sets x 200 prompts x 10 evaluated (human, SFT, 8 methods)
    expected_s = {
        "candidates": 100_000 / 2, "render": (100_000 + 6_000) / 4, "label": 100_000 / 5,
        "fidelity": 100_000 / 10,  # the additive baseline's CLIP score per candidate, at PickScore's rate
        "reference": 50_000 / 60, "train": 8 * 50_000 / 20,
        "evaluate": 6_000 * (1 / 10 + 1 / 8 + 1 / 10 + 1 / 5) + 5_400 / 2,  # CLIP, HPS, Pick, ImageReward; 9 rewriters
    }
    assert {k: v * 3600 for k, v in hours.items() if k != "total"} == pytest.approx(expected_s)
    assert hours["total"] == pytest.approx(sum(expected_s.values()) / 3600)


def test_ui_screenshots_starts_prefect_and_semdpo_without_the_venv_on_path():
    """The screenshot script runs Prefect's server and the pipeline from its own interpreter: with
    PATH holding only the system's folders, both commands still start (here: answer --help)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ui_screenshots", ROOT / "benchmarks" / "ui_screenshots.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    for command in (bench.server_command(4200), bench.run_command(None, ["seed=1"])):
        result = subprocess.run(command + ["--help"], env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (command, result.stderr[-1000:])
