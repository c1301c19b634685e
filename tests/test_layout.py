"""The package layout moved modules, never results: every stage of the shipped configs keeps the
fingerprint recorded from main before the move (tests/fixtures/fingerprints_before_layout.json), so
a store written before it is reused whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semdpo_core.pipeline.config import load_config
from semdpo_core.pipeline.plan import plan_pipeline

ROOT = Path(__file__).resolve().parent.parent
RECORDED = json.loads((ROOT / "tests" / "fixtures" / "fingerprints_before_layout.json").read_text())
DEMO_DATA = ["data.train_prompts=demo:train_prompts", "data.test_prompts=demo:test_prompts",
             "data.sft_pairs=demo:sft_pairs"]  # paper.yaml's own prompt files are built by `semdpo data build`
CASES = {"world": ("configs/world.yaml", []), "tiny": ("configs/tiny.yaml", []), "paper": ("configs/paper.yaml", DEMO_DATA),
         "default": (None, []), "world-alpha-auto": ("configs/world.yaml", ["train.alpha=auto"])}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_stage_keeps_the_fingerprint_recorded_before_the_move(case):
    path, overrides = CASES[case]
    config = load_config(None if path is None else ROOT / path, overrides)
    planned = {label: str(ref) for label, ref in plan_pipeline(config).outputs()}
    assert planned == RECORDED[case]


def test_no_folder_of_the_library_holds_more_than_twelve_modules():
    for folder in [ROOT / "semdpo_core", *(p for p in (ROOT / "semdpo_core").rglob("*") if p.is_dir())]:
        modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
        assert len(modules) <= 12, f"{folder.relative_to(ROOT)} holds {len(modules)} modules"
