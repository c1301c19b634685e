"""The pipeline as a learner, on the synthetic world, against a known answer (issue 12).

The world's rules (grammar, renderer, scorers) were fixed before any of this was run. Over three
seeds of the whole pipeline, on the held-out test prompts: DPO raises the labelling taste over
SFT (the pipeline learns) and drifts from the prompt (lower alignment with it than SFT: the drift
the paper describes). Swapping chosen and rejected must make DPO's preference go down: the
learning test can fail. The paper's third claim, Sem-DPO drifting less than DPO, did not hold in
this world (issue 12): it runs every time, on alignment, as an expected failure, reported, not enforced.
"""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from semdpo_core.pipeline.config import load_config
from semdpo_core.pipeline.plan import plan_pipeline
from semdpo_core.pipeline.schemas import EVALUATION
from semdpo_core.store.artifact_store import ArtifactStore

pytestmark = pytest.mark.slow

LEARNING = {"train": {"methods": ["dpo", "sem_dpo"]}}  # the offline default otherwise: its data, SFT and settings
PREFERENCE, ALIGNMENT, DISTANCE = "aesthetic", "alignment", "semantic_distance"  # aesthetic labels the pairs


def run_world(directory: Path, name: str, seed: int, store: Path | None = None) -> dict[str, dict[str, float]]:
    """Run the pipeline on the world; {method: {metric: mean over every test prompt}}, and the SFT check."""
    from flows.pipeline import pipeline

    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**LEARNING, "seed": seed, "store": str(store or directory / name)}))
    assert pipeline(config_path=str(path), return_state=True).is_completed()
    config = load_config(path)
    plan, store_ = plan_pipeline(config), ArtifactStore(config.store_root())
    rows = store_.read_table(plan.ref("evaluate"), EVALUATION).drop(["image"]).to_pylist()
    means: dict[str, dict[str, float]] = {}
    for method in ("sft", "dpo", "sem_dpo"):
        mine = [r for r in rows if r["method"] == method]
        means[method] = {m: statistics.fmean(dict(r["scores"])[m] for r in mine)
                         for m in (PREFERENCE, ALIGNMENT, "pick")}
        means[method][DISTANCE] = statistics.fmean(r[DISTANCE] for r in mine)
    means["sft_check"] = store_.manifest(plan.ref("sft"))["meta"]
    print(f"\nseed {seed} ({name}):",
          {m: {k: round(v, 4) for k, v in d.items() if isinstance(v, float)} for m, d in means.items()})
    return means


def swapped(pairs: pa.Table) -> pa.Table:
    """The same pairs with chosen and rejected exchanged (a labelling bug the learning test must catch)."""
    names = {"chosen": "rejected", "rejected": "chosen", "chosen_id": "rejected_id", "rejected_id": "chosen_id",
             "chosen_reward": "rejected_reward", "rejected_reward": "chosen_reward"}
    return pa.table({name: pairs.column(names.get(name, name)) for name in pairs.column_names}, schema=pairs.schema)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prefect_server) -> tuple[Path, dict[int, dict[str, dict[str, float]]]]:
    """The whole pipeline on the world, seeds 0, 1 and 2 (each seed moves SFT, sampling and training)."""
    directory = tmp_path_factory.mktemp("learning")
    return directory, {seed: run_world(directory, f"seed{seed}", seed) for seed in (0, 1, 2)}


def test_the_sft_rewriter_keeps_the_prompt_and_stops(runs):
    for seed, r in runs[1].items():
        check = r["sft_check"]
        assert check["keeps_content"] >= 0.90 and check["ends_with_eos"] >= 0.95, (seed, check)


def test_dpo_learns_the_labelling_taste(runs):
    for seed, r in runs[1].items():
        assert r["dpo"][PREFERENCE] > r["sft"][PREFERENCE], (seed, r)


def test_dpo_drifts_from_the_prompt(runs):
    """Alignment, not the MiniLM distance: a distance can grow from appended style words alone."""
    for seed, r in runs[1].items():
        assert r["dpo"][ALIGNMENT] < r["sft"][ALIGNMENT], (seed, r)


@pytest.mark.xfail(strict=False, reason=(
    "issue 12 finding, measured on alignment since issue 23: Sem-DPO's (alpha 4) alignment was below DPO's "
    "in one seed of three, level in one and above in one (2026-12-02, see README); one seed's answer also "
    "differs from machine to machine. Kept as the paper's claim, run every time, reported as XPASS the day "
    "it holds; the drift study over many seeds is what settles it"))
def test_sem_dpo_drifts_less_than_dpo(runs):
    """Alignment with the original prompt, not the MiniLM distance: a distance grows with the number of
    style words appended (about 0.10 for one, 0.23 for four) without any change of content."""
    for seed, r in runs[1].items():
        assert r["sem_dpo"][ALIGNMENT] > r["dpo"][ALIGNMENT], (seed, r)


def test_swapped_pairs_make_dpo_unlearn(runs, monkeypatch):
    """The same seed-0 run with chosen and rejected swapped in `pairs` (everything upstream reused)."""
    import semdpo_core.stages.pairs

    directory, results = runs
    store = directory / "swapped"
    shutil.copytree(directory / "seed0", store)
    for stage in ("pairs", "weigh", "reference", "train", "evaluate", "report"):
        shutil.rmtree(store / stage, ignore_errors=True)
    select = semdpo_core.stages.pairs.select_pairs
    monkeypatch.setattr(semdpo_core.stages.pairs, "select_pairs", lambda *a, **k: swapped(select(*a, **k)))
    bad = run_world(directory, "swapped", 0, store)
    assert bad["dpo"][PREFERENCE] < bad["sft"][PREFERENCE] < results[0]["dpo"][PREFERENCE], bad
