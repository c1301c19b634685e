"""The pipeline's plan: every output's fingerprint and settings, computed from the config alone.

A fingerprint hashes the stage name, the settings the stage table declares for it, its inputs'
fingerprints and the schema version; the same settings, and nothing else, are all its
computation may read. So the plan says before anything runs which outputs already exist in the
store and which must be computed. Each training run (a method, and for Sem-DPO each alpha) has
its own fingerprint: a new alpha retrains Sem-DPO alone and reuses every upstream output and
every other method.
"""

from __future__ import annotations

from dataclasses import dataclass

from semdpo_core.pipeline.config import PipelineConfig
from semdpo_core.pipeline.stage_context import Runtime, Settings, StageContext
from semdpo_core.pipeline.stage_table import STAGES, Stage, evaluated_labels, runtime
from semdpo_core.preference.methods import Method, get_method
from semdpo_core.store.artifact_store import DatasetRef, fingerprint


@dataclass(frozen=True)
class Job:
    """One output of the plan: which stage writes it, where, with which settings, from which inputs."""

    label: str  # "render", "train:sem_dpo"
    stage: Stage
    ref: DatasetRef
    settings: Settings
    inputs: dict[str, DatasetRef]  # role -> upstream output
    method: Method | None = None  # a training run's method entry

    def context(self, runtime: Runtime) -> StageContext:
        return StageContext(self.settings, runtime, self.ref, self.inputs, self.method)

    @property
    def task_name(self) -> str:
        return self.label.replace(":", "-")


@dataclass(frozen=True)
class Plan:
    """Every output a config asks for, in pipeline order."""

    jobs: tuple[Job, ...]
    evaluated: tuple[str, ...]
    runtime: Runtime

    def job(self, label: str) -> Job:
        for job in self.jobs:
            if job.label == label:
                return job
        raise KeyError(f"the plan has no output {label!r}; it has {', '.join(j.label for j in self.jobs)}")

    def ref(self, label: str) -> DatasetRef:
        """The output called `label` (a stage name, or `train:<run label>`)."""
        return self.job(label).ref

    def has(self, label: str) -> bool:
        return any(job.label == label for job in self.jobs)

    def jobs_of(self, stage: str) -> list[Job]:
        return [job for job in self.jobs if job.stage.name == stage]

    @property
    def train(self) -> dict[str, DatasetRef]:
        """{run label: its training output}."""
        return {job.label.removeprefix("train:"): job.ref for job in self.jobs_of("train")}

    def outputs(self) -> list[tuple[str, DatasetRef]]:
        """(label, ref) of every output, in pipeline order."""
        return [(job.label, job.ref) for job in self.jobs]


def plan_pipeline(config: PipelineConfig) -> Plan:
    """The plan of `config`: each stage's outputs, fingerprinted from their declared settings and inputs."""
    jobs: list[Job] = []
    refs: dict[str, DatasetRef] = {}
    for stage in STAGES:
        for planned in stage.planned(config):
            inputs = {role: refs[label] for role, label in planned.inputs.items()}
            ref = fingerprint(stage.name, planned.settings, list(inputs.values()))
            refs[planned.label] = ref
            method = get_method(planned.settings["method"]) if stage.name == "train" else None
            jobs.append(Job(planned.label, stage, ref, Settings(stage.name, planned.settings), inputs, method))
    return Plan(tuple(jobs), tuple(evaluated_labels(config)), runtime(config))

