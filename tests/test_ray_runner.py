"""Sharded stages on a local Ray instance (prefect-ray's task runner) write the same parts as
the default runner. CPU float results depend on the thread count, and Ray gives each shard task
one thread, so both runs here use one thread."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from semdpo_core.config import load_config
from semdpo_core.plan import flat_refs, plan_pipeline
from semdpo_core.store import ArtifactStore
from tests.small import SMALL

pytest.importorskip("prefect_ray")
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def run(tmp_path: Path, runner: dict) -> tuple[Path, subprocess.CompletedProcess]:
    config = tmp_path / f"{runner['kind']}.yaml"
    config.write_text(yaml.safe_dump({**SMALL, "runner": runner, "store": str(tmp_path / runner["kind"])}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(config)], capture_output=True, text=True,
                            env=env, cwd=ROOT, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return config, result


def digests(config: Path) -> dict[str, list[str]]:
    cfg = load_config(config)
    store = ArtifactStore(cfg.store_root())
    return {label: [p["sha256"] for p in store.manifest(ref)["parts"]] for label, ref in flat_refs(plan_pipeline(cfg))}


def test_ray_runner_writes_the_same_parts_as_the_local_runner(tmp_path):
    local, _ = run(tmp_path, {"kind": "local"})
    on_ray, result = run(tmp_path, {"kind": "ray", "num_cpus": 2})
    log = result.stdout + result.stderr
    for stage in ("candidates", "render", "label", "weigh", "reference", "evaluate"):
        assert "Beginning subflow run" in log and f"{stage}-shards-on-ray" in log, stage
    assert digests(on_ray) == digests(local)
    assert len(digests(local)["render"]) == 2  # 8 prompts, 4 per shard
