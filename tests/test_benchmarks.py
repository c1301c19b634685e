"""The benchmarks keep running (their numbers are read by people, never asserted)."""

import json
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
