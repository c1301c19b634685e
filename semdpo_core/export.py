"""What leaves the pipeline for other tools: the trained rewriter (`semdpo rewrite`, and
`semdpo export`: a standard Hugging Face model folder that plain transformers loads), and the
preference pairs in TRL's format with their semantic distance and weight (`semdpo export-pairs`).

The rewriter's prompt template travels as the tokenizer's chat template, so that
`pipeline("text-generation", model=DIR)([{"role": "user", "content": prompt}])` poses the prompt
exactly as the pipeline does; greedy decoding and the token limit travel as the generation config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from semdpo_core.models.loading import load_diffusion, load_rewriter
from semdpo_core.models.locate import model_cache_dir
from semdpo_core.models.rewriter import TEMPLATE
from semdpo_core.pipeline.config import PipelineConfig
from semdpo_core.pipeline.plan import plan_pipeline
from semdpo_core.pipeline.schemas import DISTANCES, EVALUATION
from semdpo_core.preference.losses import semantic_weight
from semdpo_core.preference.methods import parse_run_label
from semdpo_core.stages.evaluate import (
    METRIC_COLUMNS,
    eval_seeds,
    fill_empty,
    rewrite_prompts,
    summarize,
)
from semdpo_core.stages.prompts import prompt_id
from semdpo_core.stages.render import render_images
from semdpo_core.store.artifact_store import ArtifactStore, DatasetRef

# pose() as a Jinja chat template: the last user message in the rewriter's template
CHAT_TEMPLATE = (
    "{%- for message in messages if message['role'] == 'user' %}{%- if loop.last %}"
    + TEMPLATE.replace("{prompt}", "{{ message['content'] }}")
    + "{%- endif %}{%- endfor %}"
)


class RunNotTrained(LookupError):
    """The rewriter asked for is not (yet) in the store."""


def rewriter_ref(config: PipelineConfig, method: str) -> DatasetRef:
    """The store output holding `method`'s rewriter: `sft`, or a training run's label."""
    plan = plan_pipeline(config)
    if method == "sft":
        return plan.ref("sft")
    if method not in plan.train:
        raise RunNotTrained(f"config {config.name!r} has no training run {method!r}; its runs: "
                            f"{', '.join(['sft', *plan.train])}")
    return plan.train[method]


def rewriter_folder(config: PipelineConfig, method: str) -> tuple[Path, DatasetRef]:
    """A local save_pretrained folder of `method`'s rewriter (copied from an S3 store once)."""
    ref = rewriter_ref(config, method)
    store = ArtifactStore(config.store_root())
    if not store.is_committed(ref):
        raise RunNotTrained(f"{method} ({ref}) is not in the store {config.store_root()} yet: run `semdpo run` "
                            "with this config first")
    return store.materialize(ref, model_cache_dir() / "checkpoints"), ref


def rewrite(config: PipelineConfig, method: str, prompts: list[str], device: torch.device) -> list[str]:
    """`method`'s greedy rewrite of each prompt, decoded as the evaluation decodes it (an empty
    rewrite falls back to the prompt, as there)."""
    folder, _ = rewriter_folder(config, method)
    model, tokenizer = load_rewriter(str(folder), device)
    model.eval()
    e = config.evaluate
    return fill_empty(prompts, rewrite_prompts(model, tokenizer, prompts, batch_size=e.batch_size,
                                               max_new_tokens=e.max_new_tokens), method)


def render_rewrites(config: PipelineConfig, prompts: list[str], rewrites: list[str], target: Path,
                    device: torch.device) -> list[Path]:
    """Each rewrite's image as `target/NNN.png`, drawn with the config's renderer and the seed the
    evaluation gives that prompt (a test prompt's image is the one the evaluation scored)."""
    r = config.render
    pipe = load_diffusion(r.model, device)
    images = render_images(pipe, rewrites, eval_seeds(config.seed, [prompt_id(p) for p in prompts]),
                           num_inference_steps=r.num_inference_steps, guidance_scale=r.guidance_scale,
                           height=r.height, width=r.width, batch_size=r.batch_size, desc="render")
    target.mkdir(parents=True, exist_ok=True)
    paths = [target / f"{i:03d}.png" for i in range(len(images))]
    for path, png in zip(paths, images, strict=True):
        path.write_bytes(png)
    return paths


def export(config: PipelineConfig, method: str, target: Path) -> Path:
    """`method`'s rewriter as a Hugging Face model folder: weights (safetensors), tokenizer with
    the chat template, generation config (greedy, the evaluation's token limit), model card."""
    from transformers import GenerationConfig

    folder, ref = rewriter_folder(config, method)
    model, tokenizer = load_rewriter(str(folder), torch.device("cpu"))
    tokenizer.chat_template = CHAT_TEMPLATE
    model.generation_config = GenerationConfig(
        do_sample=False, max_new_tokens=config.evaluate.max_new_tokens,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    (target / "README.md").write_text(model_card(config, method, ref))
    return target


PAIR_FORMATS = (".parquet", ".jsonl")


def export_pairs(config: PipelineConfig, target: Path, alpha: float | None = None) -> int:
    """The pairs with their semantic distance and Sem-DPO weight, as `prompt`/`chosen`/`rejected`
    rows that `datasets` and TRL's DPOTrainer read (Parquet or JSONL, by `target`'s suffix);
    returns the row count. `alpha`: the weight's (default: train.alpha when it is one number)."""
    if target.suffix not in PAIR_FORMATS:
        raise ValueError(f"{target}: write the pairs as {' or '.join(PAIR_FORMATS)}")
    if alpha is None:
        if not isinstance(config.train.alpha, (int, float)):
            raise ValueError(f"train.alpha is {config.train.alpha!r}: name the weight's alpha with --alpha")
        alpha = float(config.train.alpha)
    store = ArtifactStore(config.store_root())
    ref = plan_pipeline(config).ref("weigh")
    if not store.is_committed(ref):
        raise RunNotTrained(f"the pairs' distances ({ref}) are not in the store {config.store_root()} yet: run "
                            "`semdpo run` with this config first")
    table = store.read_table(ref, DISTANCES)
    distance = torch.tensor(table.column("semantic_distance").to_pylist(), dtype=torch.float64)
    rows = {"prompt": table.column("prompt"), "chosen": table.column("chosen"), "rejected": table.column("rejected"),
            "semantic_distance": table.column("semantic_distance"),
            "semantic_weight": semantic_weight(distance, alpha).tolist(),
            "chosen_reward": table.column("chosen_reward"), "rejected_reward": table.column("rejected_reward")}
    out = pa.table(rows)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix == ".parquet":
        pq.write_table(out, target)
    else:
        target.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in out.to_pylist()),
                          encoding="utf-8")
    return out.num_rows


def method_metrics(config: PipelineConfig, method: str) -> dict[str, tuple[float, float]]:
    """{metric: (mean, std)} of `method` in the config's evaluation, when it is in the store."""
    store = ArtifactStore(config.store_root())
    ref = plan_pipeline(config).ref("evaluate")
    if not store.is_committed(ref):
        return {}
    rows = summarize(store.read_table(ref, EVALUATION, columns=METRIC_COLUMNS)).to_pylist()
    return {r["metric"]: (r["mean"], r["std"]) for r in rows if r["method"] == method}


def model_card(config: PipelineConfig, method: str, ref: DatasetRef) -> str:
    """The model card: what the rewriter is, how it was trained, its scores, how to use it."""
    name, alpha = parse_run_label(method)
    train = config.train
    facts: dict[str, Any] = {"base model": config.sft.base_model, "method": name, "store output": str(ref)}
    if name != "sft":
        facts.update({"beta": train.beta, "alpha": alpha if alpha is not None else train.alpha,
                      "learning rate": train.learning_rate, "batch size": train.batch_size, "epochs": train.epochs})
    facts.update({"training prompts": config.data.max_train_prompts or "all of " + config.data.train_prompts,
                  "candidates per prompt": config.candidates.num_candidates, "renderer": config.render.model})
    metrics = method_metrics(config, method)
    lines = ["---", f"base_model: {json.dumps(config.sft.base_model)}", "library_name: transformers",
             "pipeline_tag: text-generation", "tags: [sem-dpo, dpo, prompt-rewriting, text-to-image]", "---", "",
             f"# {method}: a text-to-image prompt rewriter", "",
             "Trained with semdpo (Sem-DPO: semantically weighted DPO). It rewrites a prompt so that the image "
             "gets better while the prompt keeps its meaning.", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in facts.items()]
    if metrics:
        lines += ["", "## Scores (image of the rewrite against the original prompt, mean ± std)", "",
                  "| metric | score |", "|---|---|"]
        lines += [f"| {m} | {mean:.4f} ± {std:.4f} |" for m, (mean, std) in metrics.items()]
    lines += ["", "## Use", "", "```python", "from transformers import pipeline", "",
              'rewriter = pipeline("text-generation", model="PATH")',
              'out = rewriter([{"role": "user", "content": "a desert city"}])',
              'print(out[0]["generated_text"][-1]["content"].strip())', "```", ""]
    return "\n".join(lines)
