"""The drift study's machinery (issue 23): the injected candidate changes the content, is rendered
from its prompt's seed and scored by the unchanged labeller; the shuffled-weight control has
Sem-DPO's weights in another order; a small grid runs end to end, resumes after a kill without
redoing a finished run, and its statistics equal hand-computed ones."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml

from semdpo_core.pipeline.config import ConfigError, load_config
from semdpo_core.pipeline.schemas import CANDIDATES
from semdpo_core.pipeline.seeds import derive_seed
from semdpo_core.study.seed_statistics import dose_slope, paired_difference
from semdpo_core.study.spec import StudySpec, load_spec
from semdpo_core.world.drift import INJECTED_SUFFIX, drifted, is_dosed
from semdpo_core.world.grammar import content_words, parse

ROOT = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------------------------ the dose


def test_the_injected_candidate_moves_the_setting_and_nothing_else():
    prompt = "two small red foxes in the desert"
    samples = ["two small red foxes, soft focus", "two small red foxes in the desert, vivid colors, detailed"]
    replaced = drifted("p1", prompt, samples, "replace", seed=3)
    assert replaced.source == samples[1]  # the first sample that keeps the prompt's setting
    assert parse(replaced.rewrite).setting == replaced.new_setting != "desert"
    assert content_words(prompt) - content_words(replaced.rewrite) == {"desert"}  # only the setting is lost
    assert replaced.rewrite.endswith(", vivid colors, detailed")  # its style words kept
    appended = drifted("p1", prompt, samples, "append", seed=3)
    assert appended.rewrite.startswith(samples[1] + ", ")
    assert parse(appended.rewrite).setting == appended.new_setting  # the world draws the last setting
    assert drifted("p2", "a cat", ["a cat"], "replace", seed=3) is None  # no setting to move


def test_doses_are_nested_and_near_their_share():
    ids = [f"p{i}" for i in range(4000)]
    low = {p for p in ids if is_dosed(0, p, 0.15)}
    high = {p for p in ids if is_dosed(0, p, 0.30)}
    assert low < high
    assert abs(len(low) / len(ids) - 0.15) < 0.02 and abs(len(high) / len(ids) - 0.30) < 0.02


def test_candidates_get_the_injected_candidate_with_the_prompts_render_seed():
    from semdpo_core.stages.candidates import inject_drift

    prompts = {f"p{i}": f"a red fox in the desert number {i}" for i in range(40)}
    rows = [{"candidate_id": f"{pid}-{j}", "prompt_id": pid, "prompt": p, "rewrite": f"{p}, vivid colors",
             "seed": derive_seed(7, f"render:{pid}")} for pid, p in prompts.items() for j in range(2)]
    table = pa.Table.from_pylist(rows, schema=CANDIDATES)
    out = inject_drift(table, kind="replace", share=0.5, seed=7).to_pylist()
    injected = [r for r in out if r["candidate_id"].endswith(INJECTED_SUFFIX)]
    assert {r["prompt_id"] for r in injected} == {p for p in prompts if is_dosed(7, p, 0.5)}
    assert len(out) == len(rows) + len(injected) and 10 < len(injected) < 30
    for r in injected:
        assert r["seed"] == derive_seed(7, f"render:{r['prompt_id']}")  # the prompt's seed, as its samples
        assert "desert" not in content_words(r["rewrite"]) and parse(r["rewrite"]).setting is not None
    assert inject_drift(table, kind="replace", share=0.0, seed=7).equals(table)


# --------------------------------------------------------------------- the shuffled-weight control


def test_the_shuffled_control_has_sem_dpos_weights_in_another_order():
    from semdpo_core.preference.methods import get_method

    config = load_config(None, ["train.methods=[sem_dpo, sem_dpo_shuffled]", "seed=5"])
    d = torch.linspace(0.0, 0.8, 200, dtype=torch.float64)
    settings = type("S", (), {"alpha": 4.0, "seed": 5, "sem_dpo_shuffled": config.train.sem_dpo_shuffled})()
    sem = get_method("sem_dpo").pair_weights(d, settings)
    shuffled = get_method("sem_dpo_shuffled").pair_weights(d, settings)
    assert torch.equal(torch.sort(sem).values, torch.sort(shuffled).values)  # the same weights
    assert not torch.equal(sem, shuffled)  # in another order
    assert abs(np.corrcoef(d.numpy(), shuffled.numpy())[0, 1]) < 0.2  # no longer related to the distance
    assert np.corrcoef(d.numpy(), sem.numpy())[0, 1] < -0.9
    again = get_method("sem_dpo_shuffled").pair_weights(d, settings)
    assert torch.equal(again, shuffled)  # seeded: a resumed run trains on the same order


# --------------------------------------------------------------------------------- statistics


def test_paired_difference_and_slope_against_hand_computed_values():
    arm = {0: np.array([0.5, 0.7]), 1: np.array([0.4, 0.4]), 2: np.array([0.9, 0.9])}
    base = {0: np.array([0.4, 0.6]), 1: np.array([0.5, 0.5]), 2: np.array([0.6, 0.6])}
    d = paired_difference(arm, base, resamples=500, confidence=0.95, seed=0)
    assert d.per_seed == pytest.approx((0.1, -0.1, 0.3))
    assert d.mean == pytest.approx(0.1) and d.higher == 2 and d.seeds == 3
    assert -0.1 - 1e-9 <= d.low <= d.mean <= d.high <= 0.3 + 1e-9
    assert d.p_value == pytest.approx(0.75)  # Wilcoxon: ranks 1.5, 1.5, 3; W- = 1.5 of 6 -> exact p = 0.75
    # differences 0, 0.1, 0.2 at doses 0, 0.5, 1 in every seed: slope 0.2 exactly, a zero-width interval
    slope = dose_slope({0.0: {0: 0.0, 1: 0.0}, 0.5: {0: 0.1, 1: 0.1}, 1.0: {0: 0.2, 1: 0.2}}, 200, 0.95, 0)
    assert (slope.slope, slope.low, slope.high) == pytest.approx((0.2, 0.2, 0.2))


def study_rows(values: dict[tuple[str, float, int, str], dict[str, float]]) -> pa.Table:
    """STUDY_ROWS from {(kind, share, seed, arm): {prompt id: alignment}}, each arm's prompts in its own order."""
    from semdpo_core.study.measure import STUDY_ROWS

    rows = [dict(run_index=0, seed=seed, kind=kind, share=share, arm=arm, run=arm, dataset="d", prompt_id=pid,
                 scores=[("alignment", v), ("aesthetic", 0.0), ("pick", 0.0)], loses_content=v < 0.5, loops=False,
                 semantic_distance=0.1, chosen_loses_content=share / 10, chosen_injected=share / 5, run_seconds=1.0)
            for (kind, share, seed, arm), by_prompt in values.items() for pid, v in by_prompt.items()]
    return pa.Table.from_pylist(rows, schema=STUDY_ROWS)


def test_the_study_summary_pairs_prompts_by_key_and_shares_dose_zero_across_kinds():
    from semdpo_core.study.study_report import summarise

    spec = StudySpec(seeds=[0, 1], doses=[{"share": 0}, {"share": 0.5}, {"kind": "append", "share": 0.5}],
                     arms={"dpo": {"method": "dpo"}, "sem_dpo": {"method": "sem_dpo"}}, statistics={"resamples": 200})
    base = {"a": 0.4, "b": 0.6}
    values = {}
    for seed, gain in ((0, 0.1), (1, 0.2)):
        values[("replace", 0.0, seed, "dpo")] = base
        values[("replace", 0.0, seed, "sem_dpo")] = {"b": 0.6, "a": 0.4}  # another order, no difference
        values[("replace", 0.5, seed, "dpo")] = base
        values[("replace", 0.5, seed, "sem_dpo")] = {"b": 0.6 + gain, "a": 0.4 + gain}
        values[("append", 0.5, seed, "dpo")] = base
        values[("append", 0.5, seed, "sem_dpo")] = base
    summary = summarise(study_rows(values), spec, runs=6)
    diff = {(d.kind, d.share): d for d in summary.differences if d.metric == "alignment"}
    assert set(diff) == {("replace", 0.0), ("replace", 0.5), ("append", 0.0), ("append", 0.5)}  # share 0 in both
    dosed = diff[("replace", 0.5)]
    assert dosed.per_seed == pytest.approx([0.1, 0.2]) and dosed.mean == pytest.approx(0.15)
    assert diff[("replace", 0.0)].mean == 0 and diff[("append", 0.5)].mean == 0
    slopes = {s.kind: s.slope for s in summary.slopes}
    assert slopes["replace"] == pytest.approx(0.3) and slopes["append"] == pytest.approx(0.0)  # 0.15 over a dose of 0.5
    means = {(m.kind, m.share, m.arm): m.endpoints["alignment"] for m in summary.means}
    assert means[("replace", 0.5, "sem_dpo")] == pytest.approx(0.65) and means[("append", 0.0, "dpo")] == 0.5
    assert {(d.kind, d.share): d.chosen_injected for d in summary.dose}[("replace", 0.5)] == pytest.approx(0.1)
    values[("append", 0.5, 1, "sem_dpo")] = {"a": 0.4, "c": 0.6}  # evaluated on another prompt: refused
    with pytest.raises(ValueError, match="different test prompts"):
        summarise(study_rows(values), spec, runs=6)


def test_a_loop_is_a_short_phrase_three_times_back_to_back():
    from semdpo_core.study.measure import loops

    assert loops("a red fox in the desert at sea at sea at sea")
    assert loops("a fox at night sky at night sky at night sky, highly detailed")
    assert loops("fox fox fox")
    assert not loops("one fox and one fox, detailed")  # twice is not a loop
    assert not loops("a red fox in the desert, soft focus, soft focus, soft focus")  # style only: the SFT's habit
    assert not loops("a red fox in the desert, vivid colors, detailed")


def test_collapsed_seeds_loop_or_fall_far_below_the_reference():
    from semdpo_core.study.study_report import markdown, summarise

    spec = StudySpec(seeds=[0, 1, 2], doses=[{"share": 0}],
                     arms={"sft": {"method": "sft"}, "dpo": {"method": "dpo"},
                           "fast": {"method": "dpo", "set": ["train.learning_rate=1e-3"]}},
                     baseline="sft", collapse={"reference": "sft", "loops": 0.5, "drop": 0.3},
                     statistics={"resamples": 200})
    values = {}
    for seed in (0, 1, 2):
        values[("replace", 0.0, seed, "sft")] = {"a": 0.9, "b": 0.9}
        values[("replace", 0.0, seed, "dpo")] = {"a": 0.8, "b": 0.8}  # 0.1 below: kept
        values[("replace", 0.0, seed, "fast")] = {"a": 0.5, "b": 0.55} if seed == 2 else {"a": 0.9, "b": 0.9}
    rows = study_rows(values).to_pylist()
    for r in rows:  # seed 1's fast run loops on both prompts, seed 0's on one (a share of 0.5)
        r["loops"] = r["arm"] == "fast" and (r["seed"] == 1 or (r["seed"] == 0 and r["prompt_id"] == "a"))
    from semdpo_core.study.measure import STUDY_ROWS

    summary = summarise(pa.Table.from_pylist(rows, schema=STUDY_ROWS), spec, runs=6)
    collapsed = {c.arm: c for c in summary.collapses}
    assert set(collapsed) == {"dpo", "fast"}  # the reference is not judged against itself
    assert collapsed["dpo"].collapsed == []
    assert collapsed["fast"].collapsed == [0, 1, 2]  # 0: half its rewrites loop; 1: all; 2: 0.375 below sft
    assert collapsed["fast"].loops == pytest.approx([0.5, 1.0, 0.0])
    assert collapsed["fast"].drop == pytest.approx([0.0, 0.0, 0.375])
    assert "| replace | 0 | fast | 3 of 3: 0, 1, 2 |" in markdown(summary)


def test_sft_arms_are_evaluated_not_trained():
    spec = StudySpec(seeds=[0], doses=[{"share": 0}], arms={"sft": {"method": "sft"}, "dpo": {"method": "dpo"}},
                     baseline="sft")
    assert [r.overrides[-1] for r in spec.runs()] == ["train.methods=[dpo]"]
    with pytest.raises(ValueError, match="train nothing"):
        StudySpec(seeds=[0], doses=[{"share": 0}], baseline="sft",
                  arms={"sft": {"method": "sft"}, "dpo": {"method": "dpo", "set": ["train.learning_rate=1e-3"]}})
    with pytest.raises(ValueError, match="collapse.reference 'human'"):
        StudySpec(seeds=[0], doses=[{"share": 0}], arms={"sft": {"method": "sft"}, "dpo": {"method": "dpo"}},
                  baseline="sft", collapse={"reference": "human"})


# ------------------------------------------------------------------------------------- the spec


def test_the_shipped_study_spec_plans_its_grid():
    spec = load_spec(ROOT / "configs" / "drift_study.yaml")
    runs = spec.runs()
    assert len(spec.seeds) >= 8 and len(runs) == len(spec.seeds) * len(spec.doses) * len(spec.groups())
    first = runs[0]
    config = load_config(spec.base, list(first.overrides))
    assert config.train.methods == ["dpo", "sem_dpo", "sem_dpo_shuffled", "hard_filter"]
    dosed = load_config(spec.base, list(next(r for r in runs if r.dose == spec.doses[1]).overrides))
    assert dosed.candidates.inject.share == spec.doses[1].share and config.candidates.inject is None


def test_a_bad_spec_names_its_file_and_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"seeds": [0], "doses": [{"share": 0}], "arms": {"a": {"method": "dpo"},
                                                                                   "b": {"method": "sem_dpo"}},
                                    "baseline": "c"}))
    with pytest.raises(ConfigError, match=r"bad.yaml: .*baseline 'c' is not one of the arms"):
        load_spec(path)
    with pytest.raises(ValueError, match="train the same run"):
        StudySpec(seeds=[0], doses=[{"share": 0}], arms={"a": {"method": "dpo"}, "b": {"method": "dpo"}}, baseline="a")


# ------------------------------------------------------------------------- a small grid, killed


def small_spec(tmp_path: Path) -> Path:
    """2 seeds x 2 doses x 2 arms on a small world (an SFT of three epochs, sampled at 0.7 so that most
    samples keep their prompt's content and can be dosed; its numbers mean nothing)."""
    spec = {"name": "small", "base": str(ROOT / "configs" / "world.yaml"),
            "set": ["data.max_train_prompts=48", "data.max_test_prompts=6", "shard_size=24", "sft.epochs=3",
                    "sft.check_pairs=32", "candidates.temperature=0.7", "train.epochs=1",
                    f"store={tmp_path / 'store'}"],
            "seeds": [0, 1], "doses": [{"kind": "replace", "share": 0.0}, {"kind": "replace", "share": 0.5}],
            "arms": {"dpo": {"method": "dpo"}, "sem_dpo": {"method": "sem_dpo"}}, "baseline": "dpo",
            "statistics": {"resamples": 200}}
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def study_command(spec: Path, tmp_path: Path, log: Path) -> subprocess.Popen:
    """`semdpo study SPEC` in its own process group (its temporary Prefect server is killed with it)."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "study", str(spec)], env=env, cwd=ROOT,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.slow
def test_a_small_grid_killed_midway_resumes_without_redoing_a_finished_run(tmp_path):
    from semdpo_core.pipeline.config import ScorerConfig
    from semdpo_core.pipeline.schemas import IMAGES, REWARDS
    from semdpo_core.scorers import decode_png, load_scorer
    from semdpo_core.store.artifact_store import ArtifactStore
    from semdpo_core.study.measure import STUDY_ROWS
    from semdpo_core.study.plan import plan_study
    from semdpo_core.world.renderer import WorldRenderer

    spec_path = small_spec(tmp_path)
    plan = plan_study(load_spec(spec_path))
    store = ArtifactStore(plan.store_root)
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = study_command(spec_path, tmp_path, first_log)
    deadline = time.monotonic() + 600
    while not store.shard_is_done(plan.ref, 1):  # two runs committed: kill it in the third
        assert first.poll() is None and time.monotonic() < deadline, first_log.read_text()[-3000:]
        time.sleep(0.5)
    time.sleep(3)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    assert not store.is_committed(plan.ref) and not store.shard_is_done(plan.ref, 3)
    kept = [store.shard_record(plan.ref, i) for i in range(2)]
    second = study_command(spec_path, tmp_path, second_log)
    second.wait(timeout=900)
    out = second_log.read_text()
    assert second.returncode == 0, out[-3000:]
    assert f"{len(plan.runs)} runs, 2 already done" in out or f"{len(plan.runs)} runs, 3 already done" in out, out
    assert [store.shard_record(plan.ref, i) for i in range(2)] == kept  # finished runs untouched
    rows = store.read_table(plan.ref, STUDY_ROWS)
    assert sorted(set(rows.column("run_index").to_pylist())) == [0, 1, 2, 3]
    report = json.loads(store.read_file(plan.ref, "report.json"))
    assert {(d["share"], d["arm"], d["metric"]) for d in report["differences"]} == {
        (0.0, "sem_dpo", "alignment"), (0.0, "sem_dpo", "loses_content"),
        (0.5, "sem_dpo", "alignment"), (0.5, "sem_dpo", "loses_content")}
    assert store.read_file(plan.ref, "figure.png").startswith(b"\x89PNG")
    # every injected candidate: drawn from its prompt's seed, scored by the unchanged labeller
    dosed = next(p for p in plan.runs if p.run.dose.share > 0)
    scorer = load_scorer(ScorerConfig(kind="world", model="world:aesthetic"), torch.device("cpu"))
    candidates = store.read_table(dosed.plan.ref("candidates"), CANDIDATES).to_pylist()
    images = {r["candidate_id"]: r for r in store.read_table(dosed.plan.ref("render"), IMAGES).to_pylist()}
    rewards = {r["candidate_id"]: r["reward"] for r in store.read_table(dosed.plan.ref("label"), REWARDS).to_pylist()}
    injected = [c for c in candidates if c["candidate_id"].endswith(INJECTED_SUFFIX)]
    assert injected, "no prompt got a content-changing candidate"
    for c in injected:
        siblings = [s for s in candidates if s["prompt_id"] == c["prompt_id"] and s is not c]
        assert all(s["seed"] == c["seed"] for s in siblings)  # the prompt's seed, as its own samples
        drawn = WorldRenderer().render([c["rewrite"]], [c["seed"]], 64, 64)[0]
        assert decode_png(images[c["candidate_id"]]["image"]).tobytes() == drawn.tobytes()
        assert rewards[c["candidate_id"]] == pytest.approx(scorer.score([drawn], [c["prompt"]])[0], rel=1e-5)
        assert parse(c["rewrite"]).setting != parse(c["prompt"]).setting  # the content changed
