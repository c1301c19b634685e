"""A study's plan: each run's config and pipeline plan, and the study's own dataset in the store,
fingerprinted from the grid and every run's evaluation (a changed base config is a new study; a
changed name, baseline or statistics only writes the report again).

The study dataset holds one part per run (STUDY_ROWS), committed as the run finishes, so a killed
study loses only the run in progress; its report files are written when the last run is in.
"""

from __future__ import annotations

from dataclasses import dataclass

from semdpo_core.pipeline.config import ConfigError, PipelineConfig, load_config
from semdpo_core.pipeline.plan import Plan, plan_pipeline
from semdpo_core.preference.methods import get_method
from semdpo_core.store.artifact_store import DatasetRef, fingerprint
from semdpo_core.study.measure import ROWS_VERSION
from semdpo_core.study.spec import UNTRAINED, StudyRun, StudySpec


@dataclass(frozen=True)
class PlannedRun:
    """One run of the grid with its config and the pipeline plan of that config."""

    run: StudyRun
    config: PipelineConfig
    plan: Plan

    def arms(self, spec: StudySpec) -> dict[str, str]:
        """{arm: method} of the arms this run trains."""
        return {arm: spec.arms[arm].method for arm in self.run.arms}


@dataclass(frozen=True)
class StudyPlan:
    """Every run of a study and where its results go."""

    spec: StudySpec
    runs: tuple[PlannedRun, ...]
    ref: DatasetRef

    @property
    def store_root(self) -> str:
        return self.runs[0].config.store_root()


def check_arms(config: PipelineConfig, arms: dict[str, str], where: str) -> None:
    """Before anything runs: each arm is one evaluated run, and the shuffled control shuffles
    Sem-DPO's own weights (the same alpha)."""
    alpha = config.train.alpha
    if isinstance(alpha, list) and any(get_method(m).sweeps_alpha for m in arms.values() if m not in UNTRAINED):
        raise ConfigError(f"study run {where}: train.alpha is a list, so Sem-DPO is several runs; an arm is one run "
                          "(give one alpha, or auto to choose one on validation)")
    if "sem_dpo_shuffled" in arms.values() and alpha != config.train.sem_dpo_shuffled.alpha:
        raise ConfigError(f"study run {where}: train.sem_dpo_shuffled.alpha ({config.train.sem_dpo_shuffled.alpha:g}) "
                          f"is not train.alpha ({alpha}); the control shuffles Sem-DPO's own weights: set them equal")


def plan_study(spec: StudySpec) -> StudyPlan:
    """Each run's config (the base with the run's overrides) and plan; the study's fingerprint."""
    planned = []
    for run in spec.runs():
        config = load_config(spec.base, list(run.overrides))
        planned.append(PlannedRun(run, config, plan_pipeline(config)))
    for p in planned:
        check_arms(p.config, p.arms(spec), p.run.name)
    roots = {p.config.store_root() for p in planned}
    if len(roots) > 1:
        raise ValueError(f"study {spec.name!r}: its runs name different stores ({', '.join(sorted(roots))}); "
                         "a study's runs share one store")
    # what the rows depend on; the name, baseline, primary endpoint and statistics shape only the report
    grid = spec.model_dump(mode="json", include={"base", "set", "seeds", "doses", "arms", "metrics"})
    ref = fingerprint("study", {"grid": grid, "rows": ROWS_VERSION}, [p.plan.ref("evaluate") for p in planned])
    return StudyPlan(spec, tuple(planned), ref)
