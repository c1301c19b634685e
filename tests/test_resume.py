"""Resuming: a run killed mid-render, a part damaged after commit, the S3 store going away."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest
import yaml

from semdpo_core.pipeline.config import load_config
from semdpo_core.pipeline.plan import plan_pipeline
from semdpo_core.store.artifact_store import ArtifactStore
from semdpo_core.store.backends import StoreUnavailable
from tests.small import SMALL as SMALLEST
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
    return {label: [p["sha256"] for p in store.manifest(ref)["parts"]]
            for label, ref in plan_pipeline(config).outputs()}


def run_cli(config: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", "run", str(config)], capture_output=True, text=True,
                          timeout=600, **kwargs)


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
    record = json.loads(next((tmp_path / "reference" / "runs").glob("*/run.json")).read_text())
    assert record["stages"]["train:dpo"]["state"] == "computed"  # its checkpoints came with this run

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
    total = (ArtifactStore(load_config(config).store_root()).manifest(plan.ref("pairs"))["rows"]
             * SMALL["train"]["epochs"])
    assert f"dpo: resuming from the checkpoint at step {newest} of {total}" in log
    assert part_digests(config) == part_digests(reference)


# `semdpo run` with os.replace wrapped so that the process group dies by SIGKILL in the middle of
# writing the checkpoint of step 5 (its first file written to a temporary, not yet renamed).
KILLED_IN_CHECKPOINT_WRITE = """
import os, runpy, signal, sys
replace = os.replace
def dying_replace(src, dst, *args, **kwargs):
    if "_checkpoints/step-000000005/" in str(dst):
        os.killpg(0, signal.SIGKILL)
    return replace(src, dst, *args, **kwargs)
os.replace = dying_replace
sys.argv = ["semdpo", "run", sys.argv[1]]
runpy.run_module("flows.cli", run_name="__main__")
"""


def test_checkpoints_are_bounded_and_a_killed_checkpoint_write_leaves_nothing_behind(tmp_path):
    path = tmp_path / "bounded.yaml"
    config = {**SMALL, "store": str(tmp_path / "store")}
    config["train"] = {**SMALL["train"], "checkpoint_every": 1, "keep_checkpoints": 2, "methods": ["dpo"]}
    path.write_text(yaml.safe_dump(config))
    run = plan_pipeline(load_config(path)).train["dpo"]
    checkpoints = tmp_path / "store" / run.prefix / "_checkpoints"
    killed = subprocess.run([sys.executable, "-c", KILLED_IN_CHECKPOINT_WRITE, str(path)], capture_output=True,
                            text=True, timeout=600, start_new_session=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    complete = sorted(p.name for p in checkpoints.iterdir() if (p / "_index.json").exists())
    assert complete == ["step-000000003", "step-000000004"]  # steps 1 and 2 were pruned as 3 and 4 came
    assert list(checkpoints.rglob(".*.tmp")), "the kill should leave the half-written checkpoint's temporary"

    result = run_cli(path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dpo: resuming from the checkpoint at step 4 of" in result.stdout + result.stderr
    assert not list((tmp_path / "store").rglob("*.tmp")), "temporaries of the killed writer remain"
    assert len([p for p in checkpoints.iterdir() if (p / "_index.json").exists()]) <= 2
    assert not re.search(r"checkpoint at step \d+ ->", result.stdout + result.stderr)  # no log line per checkpoint
    newest = max((tmp_path / "store" / "runs").glob("*/run.json"), key=lambda p: p.stat().st_mtime_ns)
    assert json.loads(newest.read_text())["stages"]["train:dpo"]["state"] == "resumed"


def test_render_shard_log_counts_reused_and_computed(tmp_path):
    config = write_config(tmp_path, "counted", str(tmp_path / "counted"))
    plan = plan_pipeline(load_config(config))
    render_dir = tmp_path / "counted" / plan.ref("render").prefix
    kill_when(start_cli(config), lambda: len(list((render_dir / "_shards").glob("*.json"))) >= 2)
    done = len(list((render_dir / "_shards").glob("*.json")))
    result = run_cli(config)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (f"render {plan.ref('render')}: 6 shards, {done} reused, {6 - done} to compute"
            in result.stdout + result.stderr)


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
    shard_record = tmp_path / "damaged" / render.prefix / "_shards/part-00001.parquet.json"
    shard_record.write_bytes(shard_record.read_bytes()[:7])  # truncated: its shard reruns
    label_manifest = tmp_path / "damaged" / plan_pipeline(cfg).ref("label").prefix / "_manifest.json"
    label_manifest.write_bytes(label_manifest.read_bytes()[:40])  # truncated: the stage is recommitted
    pipeline(config_path=str(config))
    assert part_digests(config) == before
    record = json.loads((tmp_path / "damaged" / render.prefix / "_shards/part-00003.parquet.json").read_text())
    assert record["sha256"] == before["render"][3]
    newest = max((tmp_path / "damaged" / "runs").glob("*/run.json"), key=lambda p: p.stat().st_mtime_ns)
    states = {label: stage["state"] for label, stage in json.loads(newest.read_text())["stages"].items()}
    assert states["render"] == states["label"] == "recomputed" and states["prompts"] == "reused"


def test_tiny_profile_pipeline_on_s3(s3_bucket, prefect_server):
    from flows.pipeline import pipeline

    table = pipeline(config_path=str(TINY_YAML), overrides=[f"store={s3_bucket}"])
    methods = ["human", "sft", "dpo", "sem_dpo", "ipo", "kto", "orpo", "beta_dpo", "hard_filter", "additive"]
    assert [line.split()[0] for line in table.splitlines()[2:]] == methods
    config = load_config(TINY_YAML, [f"store={s3_bucket}"])
    store = ArtifactStore(s3_bucket)
    assert all(store.is_committed(ref) and not store.invalid_entries(ref) for _, ref in plan_pipeline(config).outputs())
    assert store.num_parts(plan_pipeline(config).ref("render")) == 3


class StoreCut(threading.Thread):
    """Stops the S3 proxy once the render stage's first shard is in the store, and starts it again
    `restart_after` seconds later (never, when None); watches the bucket past the proxy."""

    def __init__(self, proxy, s3_bucket: str, render, restart_after: float | None = None) -> None:
        super().__init__(daemon=True)
        self.proxy, self.render, self.restart_after = proxy, render, restart_after
        self.bucket, self.prefix = s3_bucket.removeprefix("s3://").split("/", 1)
        self.direct = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"].replace(str(proxy.port),
                                                                                             str(proxy.target_port)))
        self.stopped, self.restarted, self.cancelled = threading.Event(), threading.Event(), threading.Event()

    def run(self) -> None:
        key = f"{self.prefix}/{self.render.prefix}/_shards/"
        while not self.direct.list_objects_v2(Bucket=self.bucket, Prefix=key).get("KeyCount"):
            if self.cancelled.wait(0.02):
                return
        self.proxy.stop()
        self.stopped.set()
        if self.restart_after is not None:
            time.sleep(self.restart_after)
            self.proxy.start()
            self.restarted.set()

    def finish(self) -> None:
        """Wait for a cut that happened to play out; stop watching if none did."""
        self.cancelled.set()
        self.join(timeout=120)


def test_s3_endpoint_down_for_20_s_mid_run_does_not_fail_the_run(tmp_path, s3_server, s3_bucket, prefect_server):
    """The store restarting for 20 s during render: the run waits it out (the default retry budget) and completes."""
    from flows.pipeline import pipeline

    config = tmp_path / "restart.yaml"
    config.write_text(yaml.safe_dump({**SMALLEST, "store": s3_bucket}))
    cfg = load_config(config)
    cut = StoreCut(s3_server, s3_bucket, plan_pipeline(cfg).ref("render"), restart_after=20)
    cut.start()
    try:
        table = pipeline(config_path=str(config))
        met_the_outage = cut.restarted.is_set()  # the store was cut and back before the run could end
    finally:
        cut.finish()
    assert met_the_outage, "the run ended without meeting the outage"
    assert "sem_dpo" in table
    store = ArtifactStore(s3_bucket)
    assert all(store.is_committed(ref) and not store.invalid_entries(ref) for _, ref in plan_pipeline(cfg).outputs())


def test_s3_outage_mid_run_fails_clearly_and_the_rerun_completes(tmp_path, s3_server, s3_bucket, prefect_server,
                                                                 monkeypatch):
    from flows.pipeline import pipeline

    monkeypatch.setenv("SEMDPO_STORE_RETRY_SECONDS", "2")  # an outage longer than the budget
    config = write_config(tmp_path, "s3", s3_bucket)
    cfg = load_config(config)
    render = plan_pipeline(cfg).ref("render")
    cut = StoreCut(s3_server, s3_bucket, render)
    cut.start()
    try:
        with pytest.raises(StoreUnavailable) as failure:
            pipeline(config_path=str(config))
    finally:
        cut.finish()
        if cut.stopped.is_set():
            s3_server.start()
    assert s3_server.url in str(failure.value) and s3_bucket in str(failure.value)
    assert "after 2 s of retries" in str(failure.value)

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
    from semdpo_core.models.loading import resolve

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
    assert ((render_dir / "_manifest.json").exists()
            and not (tmp_path / "retry" / plan.ref("label").prefix / "_manifest.json").exists())
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
                                      "label": {"reward_model": {"kind": "pickscore",
                                                                 "model": str(tmp_path / "nowhere")}}}))
    state = pipeline(config_path=str(config), return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"label.reward_model.model: .*nowhere \(not here\)"):
        state.result()
    assert not list((tmp_path / "missing").glob("*/*/_manifest.json"))  # no stage started
