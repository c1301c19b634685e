"""The evaluate stage: rewrite held-out prompts with each method, render with shared seeds, score vs the original.

Every method's image for a test prompt uses the same seed, so the methods differ only by the
rewrite. Scores always compare the image with the ORIGINAL user prompt.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import torch

from semdpo_core.models.inference import loaded
from semdpo_core.models.loading import (
    generation_dtype,
    load_diffusion,
    load_rewriter,
    pretrained,
)
from semdpo_core.models.rewriter import generate
from semdpo_core.pipeline.config import RewriterConfig
from semdpo_core.pipeline.schemas import EVALUATION, METRICS, PROMPTS
from semdpo_core.pipeline.seeds import derive_seed
from semdpo_core.pipeline.stage_context import StageContext
from semdpo_core.scorers.base import decode_png
from semdpo_core.stages.label import score_images, scorer_of
from semdpo_core.stages.render import render_images
from semdpo_core.stages.report.tables import mean_std, ordered
from semdpo_core.stages.weigh import SemanticEncoder, semantic_distances

log = logging.getLogger("semdpo.evaluate")


def eval_seeds(seed: int, prompt_ids: list[str]) -> list[int]:
    """One render seed per test prompt, shared by every method."""
    return [derive_seed(seed, f"evaluate:{pid}") for pid in prompt_ids]


def fill_empty(prompts: list[str], rewrites: list[str], method: str) -> list[str]:
    """An empty rewrite falls back to the original prompt (counted in the log)."""
    empty = sum(1 for r in rewrites if not r)
    if empty:
        log.warning("%s: %d of %d rewrites were empty; the original prompt is used for them",
                    method, empty, len(rewrites))
    return [r or p for p, r in zip(prompts, rewrites, strict=True)]


def token_counts(tokenizer: Any, texts: list[str]) -> list[int]:
    """Length of each text in the rewriter's tokens (paper Tables 1-2)."""
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def drift(encoder: Any, prompts: list[str], rewrites: list[str], images: list[bytes],
          batch_size: int) -> dict[str, list[float]]:
    """Proposition 2's three distances per image, in the encoder's shared text-image space:
    prompt_drift ||e(x) - e(y)||, image_drift ||e(x) - E(I(y))||, t2i_error ||e(y) - E(I(y))||."""
    out: dict[str, list[float]] = {"prompt_drift": [], "image_drift": [], "t2i_error": []}
    for start in range(0, len(prompts), batch_size):
        end = start + batch_size
        e_x, e_y = encoder.embed(texts=prompts[start:end]), encoder.embed(texts=rewrites[start:end])
        e_image = encoder.embed(images=[decode_png(b) for b in images[start:end]])
        out["prompt_drift"] += (e_x - e_y).norm(dim=-1).tolist()
        out["image_drift"] += (e_x - e_image).norm(dim=-1).tolist()
        out["t2i_error"] += (e_y - e_image).norm(dim=-1).tolist()
    return out


def evaluation_rows(
    method: str,
    test: dict[str, list],
    rewrites: list[str],
    rewrite_tokens: list[int],
    seeds: list[int],
    images: list[bytes],
    scorers: dict[str, Any],
    drift_encoder: str | None,
    batch_size: int,
    semantic_distance: list[float],
) -> pa.Table:
    """An EVALUATION table for one method: each image scored by every scorer against the original
    prompt, and its drift measured; `test` holds the test prompts' dataset, prompt_id and prompt."""
    prompts = test["prompt"]
    scores = {name: score_images(s, images, prompts, batch_size, desc=f"{method}:{name}")
              for name, s in scorers.items()}
    none = [None] * len(prompts)
    drifts = drift(scorers[drift_encoder], prompts, rewrites, images, batch_size) if drift_encoder else {}
    return pa.Table.from_pydict(
        {
            "method": [method] * len(prompts),
            "dataset": test["dataset"],
            "prompt_id": test["prompt_id"],
            "prompt": prompts,
            "rewrite": rewrites,
            "rewrite_tokens": rewrite_tokens,
            "seed": seeds,
            "image": images,
            "scores": [[(name, scores[name][i]) for name in scorers] for i in range(len(prompts))],
            **{key: drifts.get(key, none) for key in ("prompt_drift", "image_drift", "t2i_error")},
            "semantic_distance": semantic_distance,
        },
        schema=EVALUATION,
    )


METRIC_COLUMNS = ["method", "scores"]  # the evaluation columns `summarize` reads: no images


def summarize(evaluation: pa.Table) -> pa.Table:
    """METRICS: mean and standard deviation of every score per method, methods in table order."""
    values: dict[tuple[str, str], list[float]] = {}
    for method, scores in zip(evaluation.column("method").to_pylist(), evaluation.column("scores").to_pylist()):
        for name, value in scores:
            values.setdefault((method, name), []).append(value)
    rows: dict[str, list] = {name: [] for name in METRICS.names}
    for (method, metric), xs in values.items():
        mean, std = mean_std(xs)
        for key, value in zip(METRICS.names, (method, metric, len(xs), mean, std)):
            rows[key].append(value)
    return pa.Table.from_pydict(rows, schema=METRICS)


def metric_rows(metrics: pa.Table) -> list[dict[str, str]]:
    """METRICS as a row per method, `mean ± std` per metric ("-" where a method lacks one)."""
    names = ordered(metrics.column("metric").to_pylist())
    cell = {(r["method"], r["metric"]): f"{r['mean']:.4f} ± {r['std']:.4f}" for r in metrics.to_pylist()}
    return [{"method": m, **{n: cell.get((m, n), "-") for n in names}}
            for m in ordered(metrics.column("method").to_pylist())]


def format_metrics(metrics: pa.Table) -> str:
    """A plain-text table: a row per method, a column per metric (mean ± std)."""
    rows = metric_rows(metrics)
    header = list(rows[0]) if rows else ["method"]
    body = [list(row.values()) for row in rows]
    widths = [max(len(str(row[i])) for row in [header] + body) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)) for row in [header] + body]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def rewrite_prompts(model: Any, tokenizer: Any, prompts: list[str], *, batch_size: int,
                    max_new_tokens: int) -> list[str]:
    """One greedy rewrite per prompt (deterministic, as the methods are compared)."""
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = generate(model, tokenizer, prompts[start : start + batch_size], max_new_tokens=max_new_tokens)
        out.extend(options[0] for options in batch)
    return out


@torch.no_grad()
def published_rewrites(model: Any, tokenizer: Any, prompts: list[str], r: Any, batch_size: int) -> list[str]:
    """A published rewriter's rewrites, posed with its own template and decoded its own way
    (beam search for Promptist); only the new tokens, whitespace normalised."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        posed = [r.template.format(prompt=p) for p in prompts[start : start + batch_size]]
        enc = tokenizer(posed, return_tensors="pt", padding=True)
        ids = model.generate(input_ids=enc.input_ids.to(device), attention_mask=enc.attention_mask.to(device),
                             do_sample=False, num_beams=r.num_beams, length_penalty=r.length_penalty,
                             max_new_tokens=r.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        texts = tokenizer.batch_decode(ids[:, enc.input_ids.shape[1] :], skip_special_tokens=True)
        out.extend(" ".join(t.split()) for t in texts)
    return out


def load_published(model_ref: str, tokenizer_ref: str | None, device: torch.device) -> tuple[Any, Any]:
    """A published rewriter's model and tokenizer (its own tokenizer folder when it names one)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = pretrained(AutoTokenizer, tokenizer_ref or model_ref)
    model = pretrained(AutoModelForCausalLM, model_ref, dtype=generation_dtype(device)).to(device).eval()
    return model, tokenizer


def evaluate_method(
    method: str,
    test: dict[str, list],
    rewriter: tuple[Any, Any],
    pipe: Any,
    scorers: dict[str, Any],
    encoder: Any,
    settings: Any,
    render: Any,
    seed: int,
    published: Any = None,
) -> pa.Table:
    """EVALUATION rows of one method: rewrite (human input keeps the prompt as it is; its
    `rewriter` only counts tokens), render with the shared per-prompt seeds, score every image
    against the ORIGINAL prompt, and measure each rewrite's distance in meaning from the prompt
    with the weigh stage's frozen text encoder (the drift Sem-DPO is meant to limit). `settings`
    are the evaluate section's, `render` the render section's."""
    prompts = test["prompt"]
    model, tokenizer = rewriter
    rewrites = prompts
    if published is not None:  # a published rewriter, with its own template and decoding
        rewrites = fill_empty(prompts, published_rewrites(model, tokenizer, prompts, published, settings.batch_size),
                              method)
    elif method != "human":
        out = rewrite_prompts(model, tokenizer, prompts, batch_size=settings.batch_size,
                              max_new_tokens=settings.max_new_tokens)
        rewrites = fill_empty(prompts, out, method)
    seeds = eval_seeds(seed, test["prompt_id"])
    images = render_images(
        pipe, rewrites, seeds, num_inference_steps=render.num_inference_steps, guidance_scale=render.guidance_scale,
        height=render.height, width=render.width, batch_size=render.batch_size, desc=f"render:{method}",
    )
    distances = semantic_distances(encoder, prompts, rewrites, settings.batch_size, desc=f"{method}:distance")
    return evaluation_rows(
        method, test, rewrites, token_counts(tokenizer, rewrites), seeds, images, scorers, settings.drift_encoder,
        settings.batch_size, distances,
    )


def evaluate_split(ctx: StageContext, shard: int, split: str) -> pa.Table:
    """Shard i evaluates method i of the settings' methods on the prompts of `split`; its checkpoint
    is the input named after it (human input and SFT: the SFT checkpoint, whose tokenizer counts
    the human prompts' tokens)."""
    s = ctx.settings
    table = ctx.store.read_table(ctx.inputs["prompts"], PROMPTS)
    prompts = (table.filter(pc.equal(table.column("split"), split))
               .select(["dataset", "prompt_id", "prompt"]).to_pydict())
    method, device = s.methods[shard], ctx.device
    rewriters = s.evaluate.get("rewriters", {})  # not hashed (nor read) when there is none
    published = RewriterConfig.model_validate(rewriters[method].to_dict()) if method in rewriters else None
    if published is not None:
        rewriter = loaded(load_published, published.model, published.tokenizer, device)
    else:
        rewriter = loaded(load_rewriter, ctx.checkpoint_dir("sft" if method in ("human", "sft") else method), device,
                          generation_dtype(device))
    pipe = loaded(load_diffusion, s.render.model, device, ctx.runtime.compile_unet)
    scorers = {name: scorer_of(scorer, device) for name, scorer in s.evaluate.scorers.items()}
    encoder = loaded(SemanticEncoder, s.semantic_encoder, device)
    return evaluate_method(method, prompts, rewriter, pipe, scorers, encoder, s.evaluate, s.render, s.seed, published)


def evaluate_shard(ctx: StageContext, shard: int) -> pa.Table:
    """The evaluate stage: method `shard` on the held-out test prompts."""
    return evaluate_split(ctx, shard, "test")


def validate_shard(ctx: StageContext, shard: int) -> pa.Table:
    """The validate stage: sweep run `shard` on the validation prompts (held out of training), to choose alpha."""
    return evaluate_split(ctx, shard, "validation")
