"""On a local Ray instance (prefect-ray's task runner) the sharded stages' shards and the training
runs are tasks that run at the same time, and write the same parts and checkpoints as the
default runner. The Ray run also differs in every runtime setting (device, store, checkpoint
interval, render.compile), which must change no output. CPU float results depend on the thread
count, and Ray gives each task one thread, so both runs here use one thread."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from semdpo_core.pipeline.config import load_config
from semdpo_core.pipeline.plan import plan_pipeline
from semdpo_core.store.artifact_store import ArtifactStore
from tests.small import SMALL, merged

pytest.importorskip("prefect_ray")
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
# a few steps per run, so that runs at once visibly overlap; `slic` is a plugin's method (tests/plugin_methods.py),
# which a Ray worker gets from the job it runs
LONGER = {"plugins": ["tests.plugin_methods"], "train": {"epochs": 4, "methods": ["dpo", "sem_dpo", "slic"]}}
RUNTIME = {"device": "cpu", "render": {"compile": True}, "train": {"checkpoint_every": 1}}


def run(tmp_path: Path, runner: dict, extra: dict | None = None) -> tuple[Path, subprocess.CompletedProcess]:
    config = tmp_path / f"{runner['kind']}.yaml"
    config.write_text(yaml.safe_dump(merged({**SMALL, "runner": runner, "store": str(tmp_path / runner["kind"])},
                                            extra or {})))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(config)], capture_output=True, text=True,
                            env=env, cwd=ROOT, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return config, result


def manifests(config: Path) -> dict[str, dict]:
    cfg = load_config(config)
    store = ArtifactStore(cfg.store_root())
    return {label: store.manifest(ref) for label, ref in plan_pipeline(cfg).outputs()}


def digests(manifest: dict) -> tuple[list[str], dict[str, str]]:
    return [p["sha256"] for p in manifest["parts"]], {f["name"]: f["sha256"] for f in manifest["files"]}


@pytest.fixture
def plugin_unloaded_after():
    """Reading the configs imports the plugin here too; leave the registry as it was."""
    yield
    from semdpo_core.preference import methods

    methods.unregister("slic")
    sys.modules.pop("tests.plugin_methods", None)


def test_ray_runner_runs_shards_and_training_runs_at_once_and_writes_the_same_outputs(tmp_path, plugin_unloaded_after):
    local, _ = run(tmp_path, {"kind": "local"}, LONGER)
    on_ray, result = run(tmp_path, {"kind": "ray", "num_cpus": 2}, merged(LONGER, RUNTIME))
    log = result.stdout + result.stderr
    for stage in ("candidates", "render", "label", "weigh", "reference", "evaluate"):
        assert "Beginning subflow run" in log and f"{stage}-shards-on-ray" in log, stage
    assert "train-runs-on-ray" in log
    a, b = manifests(local), manifests(on_ray)
    assert list(a) == list(b)
    for label in a:
        if label != "report":  # its markdown links to the plots by their path in each store
            assert digests(a[label]) == digests(b[label]), label
    assert digests(a["report"])[0] == digests(b["report"])[0]
    assert len(a["render"]["parts"]) == 2  # 8 prompts, 4 per shard
    # the training runs overlapped on Ray (two CPUs: two at a time): some run started before another finished
    runs = [b[f"train:{m}"]["meta"] for m in ("dpo", "sem_dpo", "slic")]
    assert any(a["started"] < b["finished"] and b["started"] < a["finished"]
               for a in runs for b in runs if a is not b), runs
