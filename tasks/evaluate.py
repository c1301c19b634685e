"""Evaluate stage: every method rewrites the test prompts; images share seeds; scores use the original prompt."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from prefect.artifacts import create_markdown_artifact

from semdpo_core.config import PipelineConfig
from semdpo_core.evaluate import eval_seeds, evaluation_rows, fill_empty, format_metrics, summarize
from semdpo_core.models import load_diffusion, load_rewriter, resolve_device
from semdpo_core.render import render_images
from semdpo_core.rewriter import generate
from semdpo_core.schemas import EVALUATION, PROMPTS
from semdpo_core.scorers import load_scorer
from semdpo_core.store import DatasetRef
from tasks.common import checkpoint_dir, open_store, stage_task


@stage_task("evaluate")
def evaluate(config: PipelineConfig, ref: DatasetRef, prompts: DatasetRef, checkpoints: dict[str, DatasetRef]) -> DatasetRef:
    """`checkpoints` maps each rewriting method (sft, dpo, sem_dpo) to its stored checkpoint."""
    store = open_store(config)
    table = store.read_table(prompts, PROMPTS)
    test = table.filter(pc.equal(table.column("split"), "test"))
    ids, texts = test.column("prompt_id").to_pylist(), test.column("prompt").to_pylist()
    seeds = eval_seeds(config.seed, ids)
    e, r = config.evaluate, config.render
    device = resolve_device(config.device)
    rewrites: dict[str, list[str]] = {}
    for method in e.methods:
        if method == "human":
            rewrites[method] = texts
            continue
        model, tokenizer = load_rewriter(checkpoint_dir(config, checkpoints[method]), device)
        out = []
        for start in range(0, len(texts), e.batch_size):
            batch = generate(model, tokenizer, texts[start : start + e.batch_size], max_new_tokens=e.max_new_tokens)
            out.extend(options[0] for options in batch)
        rewrites[method] = fill_empty(texts, out, method)
    pipe = load_diffusion(r.model, device)
    scorers = {name: load_scorer(s.kind, s.model, s.processor, device) for name, s in e.scorers.items()}
    parts = []
    for method, method_rewrites in rewrites.items():
        images = render_images(
            pipe, method_rewrites, seeds, num_inference_steps=r.num_inference_steps, guidance_scale=r.guidance_scale,
            height=r.height, width=r.width, batch_size=r.batch_size, desc=f"render:{method}",
        )
        parts.append(evaluation_rows(method, ids, texts, method_rewrites, seeds, images, scorers, e.batch_size))
    evaluation = pa.concat_tables(parts)
    metrics = summarize(evaluation)
    create_markdown_artifact(
        key="semdpo-metrics",
        markdown=f"# Sem-DPO evaluation\n\nTest prompts: {len(texts)}; scores are image vs original prompt.\n\n"
        f"```\n{format_metrics(metrics)}\n```\n",
        description="mean score per method and metric",
    )
    return store.write_dataset(ref, EVALUATION, evaluation, meta={"test_prompts": len(texts)})
