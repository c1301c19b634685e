"""Fingerprints are users' stores: every stage of the shipped configs keeps the fingerprint recorded
in tests/fixtures/fingerprints.json (first recorded from main before the package layout moved the
modules, issue 25), so that a store written before a change is reused whole after it. A change
that means to recompute outputs (a new setting's default, SCHEMA_VERSION) records them anew:
`python -m tests.test_layout --record`, and says so in its commit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from semdpo_core.pipeline.config import load_config
from semdpo_core.pipeline.plan import plan_pipeline

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "fingerprints.json"
DEMO_DATA = ["data.train_prompts=demo:train_prompts", "data.test_prompts=demo:test_prompts",
             "data.sft_pairs=demo:sft_pairs"]  # paper.yaml's own prompt files are built by `semdpo data build`
CASES = {"world": ("configs/world.yaml", []), "tiny": ("configs/tiny.yaml", []),
         "paper": ("configs/paper.yaml", DEMO_DATA), "default": (None, []),
         "world-alpha-auto": ("configs/world.yaml", ["train.alpha=auto"])}


def planned(case: str) -> dict[str, str]:
    """{output label: stage/fingerprint} of every output the case's config plans."""
    path, overrides = CASES[case]
    config = load_config(None if path is None else ROOT / path, overrides)
    return {label: str(ref) for label, ref in plan_pipeline(config).outputs()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_stage_keeps_its_recorded_fingerprint(case):
    assert planned(case) == json.loads(FIXTURE.read_text())[case]


def test_no_folder_of_the_library_holds_more_than_twelve_modules():
    for folder in [ROOT / "semdpo_core", *(p for p in (ROOT / "semdpo_core").rglob("*") if p.is_dir())]:
        modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
        assert len(modules) <= 12, f"{folder.relative_to(ROOT)} holds {len(modules)} modules"


def test_a_plugin_written_before_the_move_still_imports_the_registry_and_losses():
    """A plugin's `from semdpo_core.methods import Method, register` (README before issue 25) keeps
    working, with a DeprecationWarning that names the new module."""
    code = ("import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
            "try:\n    import semdpo_core.methods\nexcept DeprecationWarning as w:\n    print(w)\n"
            "warnings.simplefilter('ignore')\n"
            "from semdpo_core.methods import Method, register\nfrom semdpo_core.losses import dpo_logits\n"
            "import semdpo_core.preference.methods as new, semdpo_core.preference.losses as losses\n"
            "assert register is new.register and Method is new.Method and dpo_logits is losses.dpo_logits\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "semdpo_core.methods moved to semdpo_core.preference.methods" in result.stdout


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    FIXTURE.write_text(json.dumps({case: planned(case) for case in CASES}, indent=1) + "\n")
    print(f"recorded {len(CASES)} configs' fingerprints in {FIXTURE.relative_to(ROOT)}")
