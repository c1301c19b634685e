"""The pipeline's configuration: one pydantic model, filled from YAML, overridden from the CLI.

The defaults are the offline profile, the synthetic world (`configs/world.yaml` writes them out):
its prompts, procedural renderer and pixel scorers, a tiny word-level GPT-2 rewriter, and the
real all-MiniLM-L6-v2 for semantic distances. `configs/tiny.yaml` runs the real architectures
(diffusers, open_clip, transformers) with tiny random weights; `configs/paper.yaml` carries the
paper's settings. Which settings each stage reads is declared once, in the stage table
(`semdpo_core/pipeline/stage_table.py`): its fingerprint hashes them and its computation sees nothing else, so
a change to `weigh.encoder` reruns weigh and what follows, nothing else.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from semdpo_core.pipeline.config_section import PRECISION_HELP, Precision, Section
from semdpo_core.preference.methods import (
    DEFAULT_METHODS,
    METHODS,
    get_method,
    parse_run_label,
)


class PromptSource(Section):
    """A dataset of prompts that `datasets.load_dataset` reads: a hub id, a local folder in a hub
    layout, or a builder ("parquet", "json", "csv") with data_files; `layout` says which column holds
    the prompt (DiffusionDB's `prompt`, Lexica's `Prompt`, COCO's `caption` or `sentences`)."""

    path: str = Field(description="hub id, local folder, or builder name with data_files")
    layout: Literal["diffusiondb", "lexica", "coco", "plain"] = "plain"
    name: str | None = Field(None, description="the dataset's config name")
    split: str = "train"
    revision: str | None = Field(None, description="a commit or tag to pin; recorded either way")
    data_files: str | list[str] | dict[str, str | list[str]] | None = None
    field: str | None = Field(None, description="JSON files: the key holding the rows "
                                                "(COCO's captions files: annotations)")
    column: str | None = Field(None, description="the prompt's column, when not the layout's")


class DataBuildConfig(Section):
    """`semdpo data build`: the files data.train_prompts and data.test_prompts name, made from these
    datasets (sizes: data.max_train_prompts, data.max_test_prompts; length: data.max_prompt_tokens)."""

    train: list[PromptSource] = Field(min_length=1, description="pooled into one train set")
    test: dict[str, PromptSource] = Field(description="one per data.test_prompts name")
    word_filter: str | None = Field(None, description="a file of words or phrases, one a line: "
                                                      "prompts holding one are dropped")
    near_duplicate: float = Field(0.8, gt=0, le=1, description="a train prompt whose word set has this Jaccard "
                                                               "similarity with a test prompt's is dropped")


class DataConfig(Section):
    """Where prompts come from. `world:NAME` is a dataset of the synthetic world, `demo:NAME` the
    built-in demo set; anything else is a file."""

    train_prompts: str = "world:train_prompts"
    test_prompts: str | dict[str, str] = Field(
        {"captions": "world:captions", "scenes": "world:scenes", "styled": "world:styled"},
        description="one source, or {dataset name: source} to evaluate several datasets",
    )
    sft_pairs: str = "world:sft_pairs"
    prompt_column: str = "prompt"
    max_train_prompts: int | None = Field(512, ge=1)
    max_test_prompts: int | None = Field(64, ge=1, description="per evaluation dataset")
    max_prompt_tokens: int = Field(48, ge=1, description="longer prompts are reported and skipped")
    preference_pairs: str | None = Field(
        None, description="your own pairs (prompt, chosen, rejected columns: TRL's format; Parquet, JSONL or CSV, "
                          "or a dataset as hf:OWNER/NAME[@REVISION][:SPLIT]): the pipeline trains on them, "
                          "skipping candidates, render and label"
    )

    build: DataBuildConfig | None = Field(None, description="the datasets `semdpo data build` "
                                                            "makes the prompt files from")

    def test_sets(self) -> dict[str, str]:
        """{dataset name: source} (see `named_test_sets`)."""
        return named_test_sets(self.test_prompts)


def named_test_sets(test_prompts: str | Mapping[str, str]) -> dict[str, str]:
    """{dataset name: source}; a single source is named after its file, `demo`, or its world dataset."""
    if not isinstance(test_prompts, str):
        return dict(test_prompts)
    if test_prompts.startswith(("demo:", "world:")):
        prefix, name = test_prompts.split(":", 1)
        return {prefix if prefix == "demo" else name: test_prompts}
    return {Path(test_prompts).stem: test_prompts}


class SFTConfig(Section):
    """Supervised fine-tuning of the base rewriter on (original, rewrite) pairs."""

    base_model: str = "tiny:world-rewriter"
    backbones: list[str] = Field(
        [], description="more base models (paper Tables 5-7: a block per backbone): `semdpo run` runs the pipeline "
        "once per backbone, this config with sft.base_model set to each, and `semdpo report` puts them in one report"
    )
    epochs: int = Field(8, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    batch_size: int = Field(32, ge=1)
    max_length: int = Field(96, ge=8)
    precision: Precision = Field("auto", description=PRECISION_HELP)
    lr_schedule: Literal["linear", "constant"] = Field("linear", description="linear: 5% warmup, then decay to 0")
    check_pairs: int = Field(256, ge=0, description="SFT pairs held out of training (at most a tenth) "
                                                    "to check the rewrites")
    check_max_new_tokens: int = Field(32, ge=1, description="the token limit a checked rewrite must stop before")


class InjectConfig(Section):
    """The drift study's dose (issue 23; world prompts): for a share of the training prompts, one more
    candidate built from an SFT sample with its setting moved to another one (`replace`: its words
    replaced; `append`: another setting appended). The labeller decides whether it is chosen."""

    kind: Literal["replace", "append"] = "replace"
    share: float = Field(ge=0, le=1)


class CandidatesConfig(Section):
    """k rewrites per training prompt, sampled from the SFT rewriter."""

    num_candidates: int = Field(4, ge=2)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(32, ge=1)
    batch_size: int = Field(64, ge=1)
    render_seed: Literal["per_prompt", "per_candidate"] = Field(
        "per_prompt", description="per_prompt: a prompt's candidates are drawn from the same noise, so that a label "
                                  "compares rewrites, not noise; per_candidate: a seed each"
    )
    inject: InjectConfig | None = Field(None, description="the drift study's dose of content-changing candidates")


class RenderConfig(Section):
    """Stable Diffusion rendering of every candidate (DDIM, seeded per candidate); `world:renderer`
    is the synthetic world's procedural renderer (steps and guidance do not apply to it)."""

    model: str = "world:renderer"
    num_inference_steps: int = Field(4, ge=1)
    guidance_scale: float = Field(7.5, ge=0)
    height: int = Field(64, ge=8)
    width: int = Field(64, ge=8)
    batch_size: int = Field(64, ge=1, description="the largest batch; on CUDA the free memory sets the size below it")
    compile: bool = Field(False, description="torch.compile the UNet on CUDA (slow first batch, faster after)")


class ScorerConfig(Section):
    """A scorer of images against prompts; `kind` picks the scoring rule (see semdpo_core.scorers)."""

    kind: Literal["clip", "pickscore", "image_reward", "hpsv2", "open_clip", "blip_itm", "world"]
    model: str = Field(description="weights: a hub id (local HF cache), a folder, a file, tiny:NAME, "
                                   "or world:NAME (kind world)")
    processor: str | None = Field(None, description="processor/tokenizer when not beside the weights")
    architecture: str | None = Field(None, description="open_clip model name (hpsv2: ViT-H-14)")


class LabelConfig(Section):
    """The reward model that turns rendered candidates into chosen/rejected pairs."""

    reward_model: ScorerConfig = ScorerConfig(kind="world", model="world:aesthetic")
    batch_size: int = Field(64, ge=1)


class FidelityConfig(Section):
    """A text-fidelity score per rendered candidate, for the additive-reward baseline (paper, App. D).

    The paper adds VisionReward's text-fidelity score; VisionReward has no offline build here, so
    a CLIP score of the image against the original prompt does its job (the world's alignment
    scorer in the offline default). Computed only when `train.methods` has `additive`."""

    scorer: ScorerConfig = ScorerConfig(kind="world", model="world:alignment")
    batch_size: int = Field(64, ge=1)


class WeighConfig(Section):
    """Offline semantic distances d(x, y_w) = 1 - cos(e(x), e(y_w)) from a frozen text encoder."""

    encoder: str = "sentence-transformers/all-MiniLM-L6-v2"
    batch_size: int = Field(64, ge=1)


class TrainConfig(Section):
    """Preference fine-tuning from the SFT checkpoint; the SFT model is the reference.

    `batch_size` pairs per micro-batch; an optimizer step every `gradient_accumulation_steps`
    micro-batches (the paper's batch 8 = batch_size * gradient_accumulation_steps). Each method
    with settings of its own has a section here named after it (`train.kto`, `train.hard_filter`,
    ...), declared by its entry in `semdpo_core.preference.methods`.
    """

    model_config = ConfigDict(extra="allow", frozen=True, protected_namespaces=())
    __pydantic_extra__: dict[str, Any]

    methods: list[str] = Field(default_factory=lambda: list(DEFAULT_METHODS),
                               description="methods to train (semdpo_core.preference.methods)")
    beta: float = Field(0.05, gt=0)
    alpha: float | list[float] | Literal["auto"] = Field(
        4.0, description="Sem-DPO's alpha; a list trains one model per alpha; auto: train alpha_grid and choose the "
        "alpha with the best normalised average on validation prompts held out from training")
    alpha_grid: list[float] = Field([1.0, 2.0, 4.0, 8.0, 15.0], min_length=2, description="the alphas auto tries")
    validation_prompts: int = Field(64, ge=1, description="training prompts held out to choose alpha (alpha: auto)")
    learning_rate: float = Field(1e-4, gt=0)
    batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    precision: Precision = Field("auto", description=PRECISION_HELP)
    epochs: int = Field(2, ge=1)
    max_length: int = Field(96, ge=8)
    disable_dropout: bool = Field(
        True, description="dropout off in the policy while training (as TRL does), "
                          "so that at step 0 it equals the reference"
    )
    checkpoint_every: int = Field(32, ge=0, description="optimizer steps between resumable checkpoints; 0: none")
    keep_checkpoints: int = Field(2, ge=1, description="newest resumable checkpoints kept per training run; "
                                                       "older ones are deleted")
    report_to: list[Literal["tensorboard"]] = Field(
        [], description="also log every step to these trackers (tensorboard: event files under logging_dir)"
    )
    logging_dir: str | None = Field(None, description="where tracker logs go; default ~/.cache/semdpo/tensorboard")

    @field_validator("methods")
    @classmethod
    def _registered(cls, methods: list[str]) -> list[str]:
        for name in methods:
            get_method(name)
        return methods

    @model_validator(mode="after")
    def _method_sections(self) -> TrainConfig:
        """Each extra key must be a registered method's section; every section gets its defaults."""
        extra = self.__pydantic_extra__
        for key, value in extra.items():
            method = METHODS.get(key)
            if method is None or method.section is None:
                sections = ", ".join(m.name for m in METHODS.values() if m.section)
                raise ValueError(f"unknown setting train.{key} (the methods' own sections are {sections})")
            if not isinstance(value, method.section):
                try:
                    extra[key] = method.section.model_validate(value)
                except ValidationError as e:
                    problems = "; ".join(f"train.{key}.{'.'.join(map(str, err['loc']))}: {err['msg']}"
                                         for err in e.errors())
                    raise ValueError(problems) from None
        for method in METHODS.values():
            if method.section is not None and method.name not in extra:
                extra[method.name] = method.section()
        return self

    def alphas(self) -> list[float]:
        """The alphas to train: the list, the one value, or the grid that `auto` chooses from."""
        if self.alpha == "auto":
            return list(self.alpha_grid)
        return list(self.alpha) if isinstance(self.alpha, list) else [self.alpha]

    def chooses_alpha(self) -> bool:
        """True when alpha is chosen on validation prompts (`auto`) for a method that sweeps it."""
        return self.alpha == "auto" and any(get_method(m).sweeps_alpha for m in self.methods)


class RewriterConfig(Section):
    """A published prompt rewriter evaluated beside the trained methods (Promptist, BeautifulPrompt):
    its weights, its own tokenizer, its prompt template and its decoding."""

    model: str = Field(description="a causal LM: hub id (local HF cache), folder or tiny:NAME")
    tokenizer: str | None = Field(None, description="its tokenizer when not beside the weights (Promptist: gpt2)")
    template: str = Field("{prompt}", description="how it is posed a prompt; {prompt} is replaced "
                                                  "(Promptist: '{prompt} Rephrase:')")
    num_beams: int = Field(1, ge=1, description="beam search width (Promptist: 8); 1 is greedy")
    length_penalty: float = 1.0
    max_new_tokens: int = Field(77, ge=1)

    @field_validator("template")
    @classmethod
    def _has_prompt(cls, template: str) -> str:
        if "{prompt}" not in template:
            raise ValueError(f"template {template!r} has no {{prompt}}")
        return template


class EvaluateConfig(Section):
    """Rewrite held-out prompts with every method, render with shared seeds, score vs the original."""

    methods: list[str] | None = Field(None, description="default: human, sft and every trained method")
    max_new_tokens: int = Field(32, ge=1)
    batch_size: int = Field(64, ge=1)
    rewriters: dict[str, RewriterConfig] = Field(
        {}, description="published rewriters to evaluate as methods, by name (each a row of every report table)"
    )
    scorers: dict[str, ScorerConfig] = {
        "alignment": ScorerConfig(kind="world", model="world:alignment"),
        "aesthetic": ScorerConfig(kind="world", model="world:aesthetic"),
        "pick": ScorerConfig(kind="world", model="world:pick"),
    }
    drift_encoder: str | None = Field(
        None, description="the scorer (kind clip, hpsv2 or open_clip) whose text-image space measures drift"
    )

    @model_validator(mode="after")
    def _drift_encoder_embeds(self) -> EvaluateConfig:
        scorer = self.scorers.get(self.drift_encoder) if self.drift_encoder else None
        if self.drift_encoder and (scorer is None or scorer.kind not in ("clip", "hpsv2", "open_clip")):
            raise ValueError(
                f"evaluate.drift_encoder {self.drift_encoder!r} must name one of evaluate.scorers of kind "
                f"clip, hpsv2 or open_clip (have {sorted(self.scorers)}); null turns drift off"
            )
        return self


PAPER_METHODS = ("human", "sft", "dpo", "kto", "beta_dpo", "orpo", "sem_dpo")  # the methods of Tables 5-7


class ReportConfig(Section):
    """The evaluation report: the paper's tables and figures from the evaluate stage's rows."""

    focus: str | None = Field(None, description="the method compared head to head; "
                                                "default sem_dpo (first alpha of a sweep)")
    semantic_metric: str = Field("alignment", description="x axis of the scatter plots (paper Fig. 3, 5)")
    preference_metrics: list[str] = Field(["aesthetic", "pick"], description="y axes of the scatter plots")
    average_over: list[str] | None = Field(
        None, description="metrics in the min-max normalised average (paper Tables 5-7); default every scorer"
    )
    normalise_over: list[str] | None = Field(
        list(PAPER_METHODS), description="methods whose range normalises each metric in avg_score (the paper's "
        "Tables 5-7 set); any other evaluated method is scored on that scale beside them; null: every method"
    )
    tie_tolerance: float = Field(1e-6, ge=0, description="|score difference| at or below this is a tie")
    drift_epsilon: float | None = Field(
        None, ge=0, description="T2I consistency error bound of Prop. 2; default the 95th percentile for human prompts"
    )
    sample_prompts: int = Field(4, ge=0, description="prompts shown side by side in the sample-image grid")


class RunnerConfig(Section):
    """Where shards and training runs run: here, one after another (local), or on Ray: one task
    per shard or run, `gpus_per_shard` GPUs each, on a local Ray instance or the cluster at `address`."""

    kind: Literal["local", "ray"] = "local"
    address: str | None = Field(None, description="Ray cluster address (e.g. ray://head:10001, auto); "
                                                  "None starts Ray here")
    gpus_per_shard: float = Field(1.0, ge=0, description="GPUs per Ray task (a shard, or a training run) "
                                                         "when CUDA is present")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a Ray instance started here (None: all)")
    shared_store: bool = Field(False, description="vouch that a store path on disk is mounted at the same place "
                                                  "on every node of the cluster at `address` (NFS, Lustre, ...)")

    def is_cluster(self) -> bool:
        """Whether tasks may run on other machines: Ray at an address (a local Ray instance is not)."""
        return self.kind == "ray" and self.address not in (None, "local")


class PipelineConfig(Section):
    """One pipeline run: where artifacts go, on what device, and each stage's settings."""

    name: str = "offline-default"
    plugins: list[str] = Field([], description="modules imported before the config is read (your own methods)")
    seed: int = 0
    store: str | None = Field(None, description="artifact store root; default $SEMDPO_STORE")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    runner: RunnerConfig = RunnerConfig()
    shard_size: int = Field(
        128, ge=1, description="prompts per shard (candidates, render, label) and pairs per shard (weigh)"
    )
    data: DataConfig = DataConfig()
    sft: SFTConfig = SFTConfig()
    candidates: CandidatesConfig = CandidatesConfig()
    render: RenderConfig = RenderConfig()
    label: LabelConfig = LabelConfig()
    fidelity: FidelityConfig = FidelityConfig()
    weigh: WeighConfig = WeighConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    report: ReportConfig = ReportConfig()

    @model_validator(mode="after")
    def _evaluated_methods_are_trained(self) -> PipelineConfig:
        if any(a < 0 for a in self.train.alphas()) or not self.train.alphas():
            raise ValueError("train.alpha must be >= 0 (or a non-empty list of such values)")
        reserved = sorted({"train", "validation"} & set(self.data.test_sets()))
        if reserved:
            raise ValueError(f"data.test_prompts: {reserved} name the training and validation splits; "
                             "give the test set another name")
        untrained = [m for m in self.evaluate.methods or []
                     if m not in ("human", "sft") and m not in self.train.methods]
        if untrained:
            raise ValueError(f"evaluate.methods {untrained} are not in train.methods {self.train.methods}")
        return self

    @model_validator(mode="after")
    def _normalise_over_names_methods(self) -> PipelineConfig:
        known = ["human", "sft", *METHODS, *self.evaluate.rewriters]
        unknown = [m for m in self.report.normalise_over or [] if parse_run_label(m)[0] not in known]
        if unknown:
            raise ValueError(f"report.normalise_over {unknown} name no method; choose from {', '.join(known)} "
                             "(a sweep's run as sem_dpo@alpha=2; null: every evaluated method)")
        return self

    @model_validator(mode="after")
    def _cluster_reaches_the_store(self) -> PipelineConfig:
        root = self.store_root()
        on_disk = "://" not in root or root.startswith("file://")
        if self.runner.is_cluster() and on_disk and not self.runner.shared_store:
            raise ValueError(
                f"runner.address {self.runner.address!r} is a Ray cluster, but the store {root!r} (store, else "
                "$SEMDPO_STORE) is a path on this machine's disk: the other nodes would write their shards to "
                "their own disks. Use an s3:// store, or a path every node mounts at the same place and set "
                "runner.shared_store: true")
        return self

    def backbone_configs(self) -> dict[str, PipelineConfig]:
        """{base model: this config with sft.base_model set to it}, for sft.base_model and each of
        sft.backbones; each runs exactly as a config naming that base model alone would."""
        models = list(dict.fromkeys([self.sft.base_model, *self.sft.backbones]))
        return {model: self.model_copy(
                    update={"sft": self.sft.model_copy(update={"base_model": model, "backbones": []})})
                for model in models}

    def store_root(self) -> str:
        """The store root: the config's, else $SEMDPO_STORE, else a folder in the user's cache."""
        if self.store:
            return self.store
        return os.environ.get("SEMDPO_STORE") or str(cache_home() / "semdpo" / "store")


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the file and field."""


def cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML config (or the offline default), apply `section.field=value` overrides."""
    data: dict[str, Any] = {}
    source = "the offline default"
    if path is not None:
        source = str(path)
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path} is a directory; name a YAML file") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"config file {path}{where} is not valid YAML "
                              f"({getattr(e, 'problem', None) or e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections, not {type(data).__name__}")
    for override in overrides or []:
        _apply_override(data, override)
    import_plugins(data.get("plugins") or [], source)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        lines = [f"  {'.'.join(str(p) for p in err['loc']) + ': ' if err['loc'] else ''}"
                 f"{err['msg'].removeprefix('Value error, ')}" for err in e.errors()]
        raise ConfigError(f"invalid config ({source}):\n" + "\n".join(lines)) from None


def import_plugins(modules: Any, source: str) -> None:
    """Import the config's plugin modules (which register methods) before its methods are checked."""
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise ConfigError(f"invalid config ({source}): plugins must be a list of module names, not {modules!r}")
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as e:
            raise ConfigError(f"invalid config ({source}): plugins: cannot import {module!r} "
                              f"({type(e).__name__}: {e}); "
                              "it must be importable where the flow and its workers run") from None


def _apply_override(data: dict[str, Any], override: str) -> None:
    """Set one nested field from `a.b.c=value`; the value is parsed as YAML (numbers, lists)."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} must look like section.field=value")
    *parents, leaf = key.strip().split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part} is not a section")
    try:
        node[leaf] = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or "not valid YAML"
        raise ConfigError(f"override {override!r}: the value {raw!r} is not valid YAML ({problem}); "
                          "quote it, e.g. --set 'train.alpha_grid=[1, 2]'") from None
