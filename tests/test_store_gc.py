"""`semdpo gc`: what no config needs is listed, and removed only when asked; nothing else goes."""

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
from typer.testing import CliRunner

from flows.cli import app
from semdpo_core.pipeline.config import load_config
from semdpo_core.pipeline.plan import plan_pipeline
from semdpo_core.store.artifact_store import ArtifactStore, DatasetRef
from semdpo_core.store.atomic_files import HOST

WORLD = Path(__file__).resolve().parents[1] / "configs" / "world.yaml"
SCHEMA = pa.schema([("x", pa.int64())])


def test_gc_lists_then_removes_only_what_no_config_needs(tmp_path):
    overrides = [str(WORLD), "--set", f"store={tmp_path}"]
    plan = plan_pipeline(load_config(WORLD, [f"store={tmp_path}"]))
    store = ArtifactStore(str(tmp_path))
    table = pa.table({"x": [1, 2]}, schema=SCHEMA)
    kept, old = plan.ref("prompts"), DatasetRef("prompts", "0123456789abcdef")
    finished, running = plan.train["dpo"], plan.train["sem_dpo"]
    for ref in (kept, old, finished):
        store.write_dataset(ref, SCHEMA, table, files={"model.bin": b"w" * 1000})
    for ref in (finished, running):  # a finished run's checkpoints can go; a running one's must stay
        store.write_checkpoint(ref, 4, {"model.safetensors": b"c" * 5000})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    # a killed writer's
    stray = tmp_path / kept.prefix / f".part-00000.parquet.{HOST}-{dead.stdout.strip()}.abcd1234.tmp"
    stray.write_bytes(b"t" * 10)

    listed = CliRunner().invoke(app, ["gc", *overrides])
    assert listed.exit_code == 0, listed.output
    assert old.prefix in listed.output and f"{finished.prefix}/_checkpoints" in listed.output
    assert "(temporary files)" in listed.output and "rerun with --delete" in listed.output
    assert f"{running.prefix}/_checkpoints" not in listed.output and f"  {kept.prefix}  " not in listed.output
    assert store.is_committed(old) and stray.exists()  # a dry run removes nothing

    removed = CliRunner().invoke(app, ["gc", *overrides, "--delete"])
    assert removed.exit_code == 0 and "removed" in removed.output, removed.output
    assert not store.is_committed(old) and not list((tmp_path / old.prefix).rglob("*"))
    assert store.latest_checkpoint(finished) is None and store.latest_checkpoint(running)[0] == 4
    assert not stray.exists()
    assert store.read_table(kept, SCHEMA) == table and store.read_table(finished, SCHEMA) == table
    assert store.read_file(finished, "model.bin") == b"w" * 1000
    again = CliRunner().invoke(app, ["gc", *overrides])
    assert "nothing to collect" in again.output, again.output


def test_gc_delete_needs_the_configs_named(tmp_path):
    result = CliRunner().invoke(app, ["gc", "--delete"])
    assert result.exit_code == 2 and "needs every config that uses the store named" in result.output


def test_gc_keeps_every_backbones_outputs(tmp_path):
    from semdpo_core.store.gc import referenced

    config = load_config(WORLD, [f"store={tmp_path}", "sft.backbones=[tiny:gpt2]"])
    alone = load_config(WORLD, [f"store={tmp_path}", "sft.base_model=tiny:gpt2"])
    own = {ref for _, ref in plan_pipeline(alone).outputs()}
    assert own - {ref for _, ref in plan_pipeline(config).outputs()}  # the second backbone trains other outputs
    assert own <= referenced([config])
