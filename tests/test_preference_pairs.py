"""Preference data in and out in TRL's format: the pairs (with their semantic distance and weight)
leave as prompt/chosen/rejected rows that `datasets` reads, and `data.preference_pairs` trains on
such rows as they are, skipping candidates, render and label."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from semdpo_core.pipeline.config import load_config
from semdpo_core.pipeline.plan import plan_pipeline
from semdpo_core.store.artifact_store import ArtifactStore
from tests.small import SMALL

pytestmark = pytest.mark.slow


def write_config(path, **overrides):
    path.write_text(yaml.safe_dump({**SMALL, "train": {**SMALL["train"], "methods": ["sem_dpo"]}, **overrides}))
    return path


def model_digest(config_path, label="sem_dpo"):
    cfg = load_config(config_path)
    manifest = ArtifactStore(cfg.store_root()).manifest(plan_pipeline(cfg).train[label])
    return {f["name"]: f["sha256"] for f in manifest["files"]}["model.safetensors"]


def test_pairs_exported_and_imported_again_train_the_same_model(tmp_path, prefect_server):
    from datasets import load_dataset

    from flows.pipeline import pipeline

    original = write_config(tmp_path / "original.yaml", store=str(tmp_path / "original"))
    pipeline(config_path=str(original))

    exported = tmp_path / "pairs.parquet"
    result = CliRunner().invoke(app, ["export-pairs", str(exported), "-c", str(original)])
    assert result.exit_code == 0, result.output
    rows = load_dataset("parquet", data_files=str(exported), split="train")
    assert {"prompt", "chosen", "rejected", "semantic_distance", "semantic_weight"} <= set(rows.column_names)
    assert rows.num_rows == ArtifactStore(load_config(original).store_root()).manifest(
        plan_pipeline(load_config(original)).ref("pairs"))["rows"]
    alpha = load_config(original).train.alpha
    assert all(abs(r["semantic_weight"] - 2.718281828459045 ** (-alpha * r["semantic_distance"])) < 1e-12 for r in rows)
    jsonl = tmp_path / "pairs.jsonl"
    assert CliRunner().invoke(app, ["export-pairs", str(jsonl), "-c", str(original)]).exit_code == 0
    assert [json.loads(line)["chosen"] for line in jsonl.read_text().splitlines()] == rows["chosen"]

    imported = write_config(tmp_path / "imported.yaml", store=str(tmp_path / "imported"),
                            data={**SMALL["data"], "preference_pairs": str(exported)})
    labels = [label for label, _ in plan_pipeline(load_config(imported)).outputs()]
    assert not {"candidates", "render", "label"} & set(labels) and "pairs" in labels
    pipeline(config_path=str(imported))
    assert model_digest(imported) == model_digest(original)  # the same pairs train byte-identical weights


def test_own_pairs_with_an_empty_field_or_a_fidelity_method_are_refused(tmp_path):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"prompt": "a fox", "chosen": "a red fox, golden hour", "rejected": "a fox"}\n'
                   '{"prompt": "an owl", "chosen": "", "rejected": "an owl, 4k"}\n')
    config = write_config(tmp_path / "c.yaml", store=str(tmp_path / "s"),
                          data={**SMALL["data"], "preference_pairs": str(bad)})
    result = CliRunner().invoke(app, ["run", str(config)])
    assert result.exit_code == 2 and f"{bad}:2: empty 'chosen'" in result.output, result.output
    additive = CliRunner().invoke(app, ["status", str(config), "--set", "train.methods=[additive]"])
    assert additive.exit_code == 2 and "additive needs a fidelity score" in additive.output, additive.output
