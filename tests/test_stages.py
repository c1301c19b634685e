"""The stage table and the method registry (issue 11): a stage's computation reads only what its
fingerprint hashes, runtime settings change no fingerprint, prefect.yaml follows the table, a
method added through the registry alone trains end to end, and no module imports in a cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pytest
import torch
import yaml
from pydantic import Field

from semdpo_core.pipeline.config import ConfigError, load_config
from semdpo_core.pipeline.config_section import Section
from semdpo_core.pipeline.plan import plan_pipeline
from semdpo_core.pipeline.schemas import EVALUATION, TRAIN_LOG
from semdpo_core.pipeline.stage_context import (
    Runtime,
    SettingNotHashed,
    Settings,
    StageContext,
)
from semdpo_core.pipeline.stage_table import STAGES
from semdpo_core.preference import methods
from semdpo_core.preference.losses import dpo_logits
from semdpo_core.preference.methods import (
    DEFAULT_METHODS,
    METHODS,
    LossOutput,
    Method,
    parse_run_label,
    run_label,
)
from semdpo_core.stages.render import render_shard
from semdpo_core.store.artifact_store import ArtifactStore, fingerprint
from tests.small import SMALL

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("semdpo_core", "tasks", "flows", "deployments")


def test_every_job_is_fingerprinted_from_exactly_the_settings_its_computation_sees():
    for overrides in ([], ["train.alpha=[1, 4]"], ["train.methods=[orpo, additive]"]):
        plan = plan_pipeline(load_config(None, overrides))
        for job in plan.jobs:
            assert fingerprint(job.stage.name, job.settings.to_dict(), list(job.inputs.values())) == job.ref, job.label


def test_a_computation_that_reads_an_undeclared_setting_fails_naming_it(tmp_path):
    job = plan_pipeline(load_config(None)).job("render")
    declared = job.settings.to_dict()
    assert "compile" not in declared  # how the UNet runs is runtime, not a setting of the images
    without_height = Settings("render", {k: v for k, v in declared.items() if k != "height"})
    ctx = StageContext(without_height, Runtime(store=str(tmp_path)), job.ref, job.inputs)
    with pytest.raises(SettingNotHashed, match=r"stage 'render' read setting 'height'.*does not hash"):
        _ = ctx.settings.height
    nested = Settings("sft", {"sft": {"epochs": 2}})
    assert nested.sft.epochs == 2
    with pytest.raises(SettingNotHashed, match=r"'sft.'?'batch_size'|sft\.'batch_size'"):
        _ = nested.sft.batch_size


def test_render_computation_sees_no_config(tmp_path, monkeypatch):
    """The real render computation, given settings without `width`, stops on that name, not later."""
    job = plan_pipeline(load_config(None)).job("render")
    store = ArtifactStore(str(tmp_path))
    candidates = job.inputs["candidates"]
    table = pa.table({"candidate_id": ["c0"], "prompt_id": ["p0"], "prompt": ["a red fox in a forest"],
                      "rewrite": ["a red fox in a forest"], "seed": [1]})
    from semdpo_core.pipeline.schemas import CANDIDATES

    store.write_dataset(candidates, CANDIDATES, table.cast(CANDIDATES))
    declared = job.settings.to_dict()
    ctx = StageContext(Settings("render", declared), Runtime(store=str(tmp_path)), job.ref, job.inputs)
    assert render_shard(ctx, 0).num_rows == 1
    ctx = StageContext(Settings("render", {k: v for k, v in declared.items() if k != "width"}),
                       Runtime(store=str(tmp_path)), job.ref, job.inputs)
    with pytest.raises(SettingNotHashed, match="width"):
        render_shard(ctx, 0)


def test_runtime_settings_change_no_fingerprint():
    base = plan_pipeline(load_config(None)).outputs()
    for override in ("device=cpu", "store=/elsewhere", "runner.kind=ray", "runner.gpus_per_shard=2",
                     "render.compile=true", "train.checkpoint_every=1", "train.keep_checkpoints=5",
                     "train.report_to=[tensorboard]", "train.logging_dir=/elsewhere/tb"):
        assert plan_pipeline(load_config(None, [override])).outputs() == base, override


def test_prefect_yaml_is_written_from_the_stage_table():
    from deployments.prefect_yaml import PREFECT_FILE, render

    assert PREFECT_FILE.read_text() == render(), "prefect.yaml is stale: run python -m deployments.prefect_yaml"
    spec = yaml.safe_load(PREFECT_FILE.read_text())
    stages = [(d["parameters"]["stage"], d["work_pool"]["name"]) for d in spec["deployments"]
              if "stage" in d["parameters"]]
    assert stages == [(s.name, f"semdpo-{s.pool}") for s in STAGES]


def test_run_labels_round_trip():
    assert run_label("sem_dpo") == "sem_dpo" and parse_run_label("sem_dpo") == ("sem_dpo", None)
    assert parse_run_label(run_label("sem_dpo", 0.5, sweep=True)) == ("sem_dpo", 0.5)


# --- a ninth method, added through the registry alone -------------------------------------------


class HingeConfig(Section):
    """The toy method's own section: SLiC's hinge on the DPO margin."""

    margin: float = Field(1.0, gt=0)


def hinge(b, s, _state) -> LossOutput:
    logits = dpo_logits(b.chosen_logps, b.rejected_logps, b.reference_chosen_logps, b.reference_rejected_logps)
    return LossOutput(torch.relu(s.hinge.margin - s.beta * logits))


@pytest.fixture
def hinge_method():
    methods.register(Method("hinge", hinge, "max(0, margin - beta * DPO margin)", section=HingeConfig))
    yield
    methods.unregister("hinge")


def test_a_registered_method_gets_its_config_section(hinge_method):
    config = load_config(None, ["train.methods=[dpo, hinge]", "train.hinge.margin=2"])
    assert config.train.hinge.margin == 2.0
    plan = plan_pipeline(config)
    assert list(plan.train) == ["dpo", "hinge"]
    assert set(plan.job("train:hinge").inputs) == {"sft", "pairs", "reference"}
    with pytest.raises(ConfigError, match="train.hinge.margin"):
        load_config(None, ["train.methods=[hinge]", "train.hinge.margin=-1"])


def test_an_unregistered_method_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"unknown method 'hinge'; known methods: dpo, sem_dpo"):
        load_config(None, ["train.methods=[hinge]"])
    with pytest.raises(ConfigError, match=r"plugins: cannot import 'no_such_module' \(ModuleNotFoundError"):
        load_config(None, ["plugins=[no_such_module]"])
    with pytest.raises(ValueError, match="none of human, sft, prompts"):
        methods.register(Method("sft", hinge, "x"))


def test_readme_method_table_is_the_registry():
    rows = [line.split("|") for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `")]
    table = {cells[1].strip().strip("`"): cells[2].strip() for cells in rows if cells[1].strip().strip("`") in METHODS}
    assert table == {name: method.summary for name, method in METHODS.items()}
    assert set(DEFAULT_METHODS) == set(METHODS) - {"sem_dpo_shuffled"}  # the study's control: only when named


# --- every declared setting is read ---------------------------------------------------------------

# Declared but never read: hashed so that stores made before the stage table keep their fingerprints
# (render, label and fidelity follow the candidates' parts, so their shard_size only repeats the
# candidates'; the prompts stage hashed the whole data section and the seed from the start), and
# the prompt files' digests, which stand for the bytes the stage reads through the files' paths.
HASHED_UNREAD = {
    ("prompts", "seed"), ("prompts", "data.sft_pairs"),
    ("prompts", "data.digests.train_prompts"), ("prompts", "data.digests.test_prompts.demo"),
    ("render", "shard_size"), ("label", "shard_size"), ("fidelity", "shard_size"),
    ("evaluate", "evaluate.methods"),  # the evaluated runs are `methods`, the resolved list
}


def leaves(values, prefix=""):
    for key, value in values.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


@pytest.mark.slow
def test_every_setting_a_stage_declares_is_read(tmp_path, prefect_server, monkeypatch):
    """The other direction of the stage table's rule: run every stage (all eight methods) and
    record each read of a Settings view; declared and never read is only the known list."""
    from flows.pipeline import pipeline

    reads: set[tuple[str, str]] = set()
    getitem = Settings.__getitem__

    def recording(self, name):
        value = getitem(self, name)
        reads.add((self._stage, f"{self._path}{name}"))
        return value

    monkeypatch.setattr(Settings, "__getitem__", recording)
    path = tmp_path / "all.yaml"
    path.write_text(yaml.safe_dump({**SMALL, "train": {**SMALL["train"], "methods": list(DEFAULT_METHODS)},
                                    "store": str(tmp_path / "store")}))
    pipeline(config_path=str(path))
    plan = plan_pipeline(load_config(path))
    declared = {(job.stage.name, leaf) for job in plan.jobs for leaf in leaves(job.settings.to_dict())}
    unread = {(stage, leaf) for stage, leaf in declared if (stage, leaf) not in reads}
    assert unread == HASHED_UNREAD



@pytest.mark.slow
def test_a_method_added_through_the_registry_alone_trains_end_to_end(tmp_path, hinge_method, prefect_server):
    from flows.pipeline import pipeline

    path = tmp_path / "hinge.yaml"
    small = {**SMALL, "train": {**SMALL["train"], "methods": ["dpo", "hinge"], "hinge": {"margin": 0.5}}}
    path.write_text(yaml.safe_dump({**small, "store": str(tmp_path / "store")}))
    table = pipeline(config_path=str(path))
    assert any(line.startswith("hinge") for line in table.splitlines())
    config = load_config(path)
    plan, store = plan_pipeline(config), ArtifactStore(config.store_root())
    log = store.read_table(plan.train["hinge"], TRAIN_LOG).to_pylist()
    pairs = store.manifest(plan.ref("pairs"))["rows"]
    assert {r["method"] for r in log} == {"hinge"} and len(log) == -(-pairs // SMALL["train"].get("batch_size", 8))
    # the registered loss ran: with every beta * margin below 0.5 the hinge is linear, mean = 0.5 - reward margin
    # (DPO's loss here would be about log 2 = 0.69)
    assert log[0]["loss"] == pytest.approx(0.5 - log[0]["reward_margin"], abs=1e-6)
    weights = {label: {f["name"]: f["sha256"] for f in store.manifest(plan.ref(label))["files"]}["model.safetensors"]
               for label in ("sft", "train:hinge")}
    assert weights["sft"] != weights["train:hinge"]  # the policy moved
    methods_evaluated = set(store.read_table(plan.ref("evaluate"), EVALUATION).column("method").to_pylist())
    assert methods_evaluated == {"human", "sft", "dpo", "hinge"}
    assert "hinge" in store.read_file(plan.ref("report"), "report.md").decode()


# --- imports ------------------------------------------------------------------------------------


def project_modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported_modules(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The project modules a file imports, at the top or inside functions (`from a import b` counts
    b when b is a module)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {m for m in found if m in modules and m != name}


def test_no_module_imports_in_a_cycle():
    modules = project_modules()
    graph = {name: imported_modules(path, name, modules) for name, path in modules.items()}
    assert "semdpo_core.models.tiny" in graph["semdpo_core.models.loading"]  # the walk sees real edges
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, trail + [dep])
        state[name] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_the_core_never_imports_prefect_and_imports_the_project_at_the_top():
    for name, path in project_modules().items():
        if not name.startswith("semdpo_core"):
            continue
        tree = ast.parse(path.read_text())
        top = set(tree.body)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.split(".")[0] == "prefect" for n in names), f"{name} imports prefect"
                if node not in top and any(n.startswith("semdpo_core") for n in names):
                    raise AssertionError(f"{name}:{node.lineno} imports {names} inside a function")


@pytest.mark.slow
def test_every_module_imports_on_its_own_in_a_fresh_interpreter():
    def load(name: str) -> tuple[str, int, str]:
        result = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, cwd=ROOT,
                                timeout=300)
        return name, result.returncode, result.stderr[-2000:]

    with ThreadPoolExecutor(max_workers=2) as pool:
        failed = [(n, err) for n, rc, err in pool.map(load, project_modules()) if rc != 0]
    assert not failed, failed
