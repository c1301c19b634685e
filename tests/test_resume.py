"""Resuming: a run killed mid-render, a part damaged after commit, the S3 store going away."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest
import yaml

from semdpo_core.backends import StoreUnavailable
from semdpo_core.config import load_config
from semdpo_core.plan import plan_pipeline
from semdpo_core.store import ArtifactStore
from tests.small import TINY_YAML, tiny_profile

pytestmark = pytest.mark.slow

SMALL = tiny_profile({
    "shard_size": 2,
    "data": {"max_train_prompts": 12, "max_test_prompts": 3},
    "sft": {"epochs": 1},
    "candidates": {"num_candidates": 2, "max_new_tokens": 12},
    "render": {"num_inference_steps": 6},
    "train": {"epochs": 3, "batch_size": 1, "checkpoint_every": 2, "methods": ["dpo", "sem_dpo"]},
    "evaluate": {"max_new_tokens": 12},
})


def write_config(tmp_path: Path, name: str, store: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**SMALL, "store": store}))
    return path


def part_digests(config_path: Path) -> dict[str, list[str]]:
    config = load_config(config_path)
    store = ArtifactStore(config.store_root())
    return {label: [p["sha256"] for p in store.manifest(ref)["parts"]] for label, ref in plan_pipeline(config).outputs()}


def run_cli(config: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", "run", str(config)], capture_output=True, text=True, timeout=600, **kwargs)


def start_cli(config: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def kill_when(process: subprocess.Popen, ready, timeout: float = 300) -> None:
    """SIGKILL the run (and its Prefect server) as soon as `ready()` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not ready() and process.poll() is None:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_runs_killed_mid_render_and_mid_training_resume_where_they_stopped(tmp_path):
    reference = write_config(tmp_path, "reference", str(tmp_path / "reference"))
    assert run_cli(reference).returncode == 0

    config = write_config(tmp_path, "killed", str(tmp_path / "killed"))
    plan = plan_pipeline(load_config(config))
    render_dir = tmp_path / "killed" / plan.ref("render").prefix
    kill_when(start_cli(config), lambda: len(list((render_dir / "_shards").glob("*.json"))) >= 2)
    committed = sorted((render_dir / "_shards").glob("*.json"))
    assert 2 <= len(committed) < 6, "the kill should land in the middle of the render stage"
    assert not (render_dir / "_manifest.json").exists()
    parts = {p.name.removesuffix(".json"): (render_dir / p.name.removesuffix(".json")).stat() for p in committed}

    # second run: killed during DPO training, once a checkpoint past step 4 is in the store
    checkpoints = tmp_path / "killed" / plan.train["dpo"].prefix / "_checkpoints"
    kill_when(start_cli(config), lambda: (checkpoints / "step-000000004" / "_index.json").exists())
    assert not (tmp_path / "killed" / plan.train["dpo"].prefix / "_manifest.json").exists()
    newest = max(int(p.name.split("-")[1]) for p in checkpoints.iterdir() if (p / "_index.json").exists())
    for name, before in parts.items():  # committed render parts were not rewritten
        after = (render_dir / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    result = run_cli(config)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "render: reusing" in log or "Cached" in log
    total = ArtifactStore(load_config(config).store_root()).manifest(plan.ref("pairs"))["rows"] * SMALL["train"]["epochs"]
    assert f"dpo: resuming from the checkpoint at step {newest} of {total}" in log
    assert part_digests(config) == part_digests(reference)


def test_render_shard_log_counts_reused_and_computed(tmp_path):
    config = write_config(tmp_path, "counted", str(tmp_path / "counted"))
    plan = plan_pipeline(load_config(config))
    render_dir = tmp_path / "counted" / plan.ref("render").prefix
    kill_when(start_cli(config), lambda: len(list((render_dir / "_shards").glob("*.json"))) >= 2)
    done = len(list((render_dir / "_shards").glob("*.json")))
    result = run_cli(config)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"render {plan.ref('render')}: 6 shards, {done} reused, {6 - done} to compute" in result.stdout + result.stderr


def test_damaged_part_is_recomputed_not_read(tmp_path, prefect_server):
    from flows.pipeline import pipeline

    config = write_config(tmp_path, "damaged", str(tmp_path / "damaged"))
    pipeline(config_path=str(config))
    before = part_digests(config)
    cfg = load_config(config)
    render = plan_pipeline(cfg).ref("render")
    part = tmp_path / "damaged" / render.prefix / "part-00003.parquet"
    data = bytearray(part.read_bytes())
    data[100] ^= 0xFF
    part.write_bytes(bytes(data))
    pipeline(config_path=str(config))
    assert part_digests(config) == before
    record = json.loads((tmp_path / "damaged" / render.prefix / "_shards/part-00003.parquet.json").read_text())
    assert record["sha256"] == before["render"][3]


def test_tiny_profile_pipeline_on_s3(s3_bucket, prefect_server):
    from flows.pipeline import pipeline

    table = pipeline(config_path=str(TINY_YAML), overrides=[f"store={s3_bucket}"])
    methods = ["human", "sft", "dpo", "sem_dpo", "ipo", "kto", "orpo", "beta_dpo", "hard_filter", "additive"]
    assert [line.split()[0] for line in table.splitlines()[2:]] == methods
    config = load_config(TINY_YAML, [f"store={s3_bucket}"])
    store = ArtifactStore(s3_bucket)
    assert all(store.is_committed(ref) and not store.invalid_entries(ref) for _, ref in plan_pipeline(config).outputs())
    assert store.num_parts(plan_pipeline(config).ref("render")) == 3


def test_s3_outage_mid_run_fails_clearly_and_the_rerun_completes(tmp_path, s3_server, s3_bucket, prefect_server, monkeypatch):
    from flows.pipeline import pipeline

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    config = write_config(tmp_path, "s3", s3_bucket)
    cfg = load_config(config)
    render = plan_pipeline(cfg).ref("render")
    bucket, prefix = s3_bucket.removeprefix("s3://").split("/", 1)
    direct = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"].replace(str(s3_server.port), str(s3_server.target_port)))

    def cut_when_render_starts():
        key = f"{prefix}/{render.prefix}/_shards/"
        while not direct.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount"):
            time.sleep(0.02)
        s3_server.stop()

    watcher = threading.Thread(target=cut_when_render_starts, daemon=True)
    watcher.start()
    try:
        with pytest.raises(StoreUnavailable) as failure:
            pipeline(config_path=str(config))
    finally:
        watcher.join(timeout=60)
        s3_server.start()
    assert s3_server.url in str(failure.value) and s3_bucket in str(failure.value)

    store = ArtifactStore(s3_bucket)
    kept = [k for k in store.backend.list(f"{render.prefix}/_shards/")]
    assert kept, "shards committed before the outage are kept"
    table = pipeline(config_path=str(config))
    assert "sem_dpo" in table
    assert all(store.is_committed(ref) for _, ref in plan_pipeline(cfg).outputs())


def test_prefect_flow_run_retry_continues_a_failed_run(tmp_path, prefect_server):
    import shutil

    from prefect.settings import PREFECT_API_URL

    from flows.pipeline import pipeline
    from semdpo_core.models import resolve

    reward_model = tmp_path / "reward-model"  # there, but not a model yet: the check passes, the label stage fails
    reward_model.mkdir()
    (reward_model / "config.json").write_text("a download cut short")
    config = tmp_path / "retry.yaml"
    config.write_text(yaml.safe_dump({**SMALL, "store": str(tmp_path / "retry"),
                                      "label": {"reward_model": {"kind": "pickscore", "model": str(reward_model)}}}))
    state = pipeline(config_path=str(config), return_state=True)
    assert state.is_failed()
    plan = plan_pipeline(load_config(config))
    render_dir = tmp_path / "retry" / plan.ref("render").prefix
    assert (render_dir / "_manifest.json").exists() and not (tmp_path / "retry" / plan.ref("label").prefix / "_manifest.json").exists()
    before = {p.name: p.stat().st_mtime_ns for p in render_dir.glob("part-*.parquet")}

    shutil.rmtree(reward_model)
    shutil.copytree(resolve("tiny:pickscore"), reward_model)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    result = subprocess.run(
        [sys.executable, "-m", "prefect", "flow-run", "retry", str(state.state_details.flow_run_id),
         "--entrypoint", "flows/pipeline.py:pipeline"],
        capture_output=True, text=True, timeout=600, env=env, cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert all(store_ref_done(config, ref) for _, ref in plan.outputs())
    assert {p.name: p.stat().st_mtime_ns for p in render_dir.glob("part-*.parquet")} == before  # not redone
    assert f"render {plan.ref('render')}: 6 shards, 6 reused, 0 to compute" in result.stdout + result.stderr


def store_ref_done(config_path: Path, ref) -> bool:
    return ArtifactStore(load_config(config_path).store_root()).is_committed(ref)


def test_a_missing_model_stops_the_flow_before_any_stage(tmp_path, prefect_server):
    """A deployment run checks every model too (not only the CLI): the error names the config field."""
    from flows.pipeline import pipeline

    config = tmp_path / "missing.yaml"
    config.write_text(yaml.safe_dump({**SMALL, "store": str(tmp_path / "missing"),
                                      "label": {"reward_model": {"kind": "pickscore", "model": str(tmp_path / "nowhere")}}}))
    state = pipeline(config_path=str(config), return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"label.reward_model.model: .*nowhere \(not here\)"):
        state.result()
    assert not list((tmp_path / "missing").glob("*/*/_manifest.json"))  # no stage started
