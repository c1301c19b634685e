"""Which model files a config needs, and whether this machine has them, before anything runs.

Every model a config names (the rewriter, Stable Diffusion, every scorer, the semantic encoder)
is a need: its config field, its reference and the files its loader reads (none listed: a whole
`from_pretrained` folder). `semdpo check` and `semdpo run` look each one up the way the loaders
will (a tiny or world model is built here; a local folder must exist; a hub id must be in the
local Hugging Face cache, nothing is downloaded) and, for what is missing, print the one command
that fetches it on a machine with network access.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from semdpo_core.models.image_reward_net import CHECKPOINT as IMAGE_REWARD_CHECKPOINT
from semdpo_core.models.image_reward_net import MED_CONFIG
from semdpo_core.models.locate import PACKAGED, ModelNotFound, cached_snapshot, locate
from semdpo_core.pipeline.config import PipelineConfig, ScorerConfig
from semdpo_core.pipeline.stage_table import own_pairs, uses_fidelity
from semdpo_core.scorers.hps import HPS_CHECKPOINT

BUILT_HERE = ("tiny:", "world:")  # built on first use, never fetched
# what a whole-repo download leaves out: other frameworks' weights, single-file checkpoints and
# SD's safety checker (SD v1.4's 4 GB and 7 GB .ckpt files; TensorFlow/Flax/ONNX/Rust/Core ML
# copies), never read here
NOT_READ = ("*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.ot", "coreml/*", "safety_checker/*")


@dataclass(frozen=True)
class ModelNeed:
    """One model reference of a config: where it is set, what it names, which files of it are read."""

    field: str
    ref: str
    files: tuple[str, ...] = ()  # must be there; empty: the whole folder (from_pretrained)
    include: tuple[str, ...] = ()  # what to download when it is not just `files` (a processor's small files)


def processor_need(field: str, ref: str) -> ModelNeed:
    """A processor or tokenizer given apart from its model: its JSON and text files, not the weights
    beside them (PickScore's processor repo holds 10 GB of CLIP-H weights)."""
    return ModelNeed(field, ref, ("tokenizer_config.json",), ("*.json", "*.txt"))


def download_command(ref: str, files: set[str] | None, include: set[str]) -> str:
    """`hf download` of a repo: its patterns, else its files, else all of it but what is never read."""
    if files is None:
        return " ".join(["hf download", ref, *[f"--exclude '{pattern}'" for pattern in NOT_READ]])
    if include:
        return " ".join(["hf download", ref, *[f"--include '{p}'" for p in sorted(include)]])
    return " ".join(["hf download", ref, *sorted(files)])


def scorer_needs(field: str, scorer: ScorerConfig) -> list[ModelNeed]:
    """The files a scorer's kind loads (semdpo_core.scorers)."""
    if scorer.kind == "world":
        return []
    if scorer.kind == "image_reward":
        needs = [ModelNeed(f"{field}.model", scorer.model, (IMAGE_REWARD_CHECKPOINT, MED_CONFIG))]
        if scorer.processor is not None:
            needs.append(processor_need(f"{field}.processor", scorer.processor))
        return needs
    if scorer.kind == "hpsv2":
        return [ModelNeed(f"{field}.model", scorer.model, (HPS_CHECKPOINT,))]
    if scorer.kind == "open_clip":
        return [ModelNeed(f"{field}.model", scorer.model)] if "/" in scorer.model else []  # else an open_clip tag
    needs = [ModelNeed(f"{field}.model", scorer.model)]
    if scorer.processor is not None:
        needs.append(processor_need(f"{field}.processor", scorer.processor))
    return needs


def model_needs(config: PipelineConfig) -> list[ModelNeed]:
    """Every model the stages of `config` load, in pipeline order (the fidelity scorer only when
    a trained method uses fidelity; no reward model when the user brings the pairs)."""
    needs = [ModelNeed("sft.base_model", config.sft.base_model)]
    needs += [ModelNeed("sft.backbones", model) for model in config.sft.backbones]
    needs.append(ModelNeed("render.model", config.render.model))
    if not own_pairs(config):
        needs += scorer_needs("label.reward_model", config.label.reward_model)
    if uses_fidelity(config):
        needs += scorer_needs("fidelity.scorer", config.fidelity.scorer)
    needs.append(ModelNeed("weigh.encoder", config.weigh.encoder))
    for name, rewriter in config.evaluate.rewriters.items():
        needs.append(ModelNeed(f"evaluate.rewriters.{name}.model", rewriter.model))
        if rewriter.tokenizer is not None:
            needs.append(processor_need(f"evaluate.rewriters.{name}.tokenizer", rewriter.tokenizer))
    for name, scorer in config.evaluate.scorers.items():
        needs += scorer_needs(f"evaluate.scorers.{name}", scorer)
    return [n for n in needs if not n.ref.startswith(BUILT_HERE)]


def tokenizer_needs(config: PipelineConfig) -> list[ModelNeed]:
    """The rewriters' tokenizers alone: what `semdpo data build` reads to drop over-long prompts."""
    needs = [processor_need("sft.base_model", config.sft.base_model)]
    needs += [processor_need("sft.backbones", model) for model in config.sft.backbones]
    return [n for n in needs if not n.ref.startswith(BUILT_HERE)]


def missing_files(need: ModelNeed) -> list[str] | None:
    """None when the need is met here; else what is missing (['*'] for the whole folder or repo)."""
    if need.ref in PACKAGED and locate(need.ref) != need.ref:
        return None
    folder = Path(need.ref).expanduser()
    if not (need.ref.startswith(("/", ".", "~")) or folder.exists()):
        snapshot = cached_snapshot(need.ref)
        if snapshot is None:
            return ["*"]
        folder = Path(snapshot)
    if folder.is_file():
        return None if len(need.files) <= 1 else ["*"]
    if not folder.is_dir() or not any(folder.iterdir()):
        return ["*"]
    missing = [f for f in need.files if not (folder / f).is_file()]
    return missing or None


def model_status(config: PipelineConfig) -> list[tuple[ModelNeed, list[str] | None]]:
    """Every need of the config with what this machine lacks of it (None: nothing)."""
    return [(need, missing_files(need)) for need in model_needs(config)]


def unmet(needs: list[ModelNeed]) -> list[tuple[ModelNeed, list[str]]]:
    """The needs this machine does not meet, each with what is missing."""
    return [(need, missing) for need in needs if (missing := missing_files(need)) is not None]


def by_repo(needs: list[ModelNeed]) -> dict[str, tuple[set[str] | None, set[str], list[str]]]:
    """{hub id: (files to fetch or None for the whole repo, include patterns, the fields naming it)}."""
    repos: dict[str, tuple[set[str] | None, set[str], list[str]]] = {}
    for need in needs:
        if need.ref.startswith(("/", ".", "~")):
            continue  # a local path: the user's own copy, nothing to download
        files, include, fields = repos.get(need.ref, (set(), set(), []))
        files = None if files is None or not need.files else files | set(need.files)
        repos[need.ref] = (files, include | set(need.include), fields + [need.field])
    return repos


def fetch_command(missing: list[tuple[ModelNeed, list[str]]]) -> str:
    """One shell line that puts every missing hub model into the Hugging Face cache."""
    repos = by_repo([need for need, _ in missing])
    return " && ".join(download_command(ref, files, include) for ref, (files, include, _) in repos.items())


def require_models(config: PipelineConfig, needs: list[ModelNeed] | None = None) -> None:
    """Stop before any stage starts when a model the config names (or one of `needs`) is not on
    this machine: the error names each config field and gives the command that fetches what is missing."""
    missing = unmet(model_needs(config) if needs is None else needs)
    if not missing:
        return
    lines = [f"  {need.field}: {need.ref} ({'not here' if files == ['*'] else 'lacks ' + ', '.join(files)})"
             for need, files in missing]
    command = fetch_command(missing)
    raise ModelNotFound(
        "models this config needs are not on this machine (nothing is downloaded):\n" + "\n".join(lines)
        + (f"\nfetch them into the Hugging Face cache on a machine with network access:\n  {command}"
           if command else "")
        + "\nor set those fields to local folders that hold the models"
    )


def needs_listing(config: PipelineConfig) -> list[str]:
    """One line per model repo the config reads: `repo: files (fields)` (no files: the whole repo)."""
    return [f"{ref}{': ' + ', '.join(sorted(include or files)) if files else ''} ({', '.join(fields)})"
            for ref, (files, include, fields) in by_repo(model_needs(config)).items()]
