"""The benchmarks keep running (their numbers are read by people, never asserted)."""

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
    assert "ratio" in result.stdout and "projected 50k-prompt run" in result.stdout
