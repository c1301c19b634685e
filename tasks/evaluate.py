"""Evaluate stage: every method rewrites the test prompts; images share seeds; scores use the original prompt."""

from __future__ import annotations

import pyarrow.compute as pc
from prefect.artifacts import create_markdown_artifact

from semdpo_core.config import PipelineConfig
from semdpo_core.evaluate import evaluate_methods, format_metrics, summarize
from semdpo_core.models import resolve_device
from semdpo_core.schemas import EVALUATION, PROMPTS
from semdpo_core.store import DatasetRef
from tasks.common import checkpoint_dir, open_store, stage_task


@stage_task("evaluate")
def evaluate(
    config: PipelineConfig, ref: DatasetRef, prompts: DatasetRef, methods: list[str], checkpoints: dict[str, DatasetRef]
) -> DatasetRef:
    """`methods` in report order; `checkpoints` maps each rewriting method (sft, training runs) to its checkpoint."""
    store = open_store(config)
    table = store.read_table(prompts, PROMPTS)
    test = table.filter(pc.equal(table.column("split"), "test"))
    rewriters = {m: None if m == "human" else checkpoint_dir(config, checkpoints[m]) for m in methods}
    evaluation = evaluate_methods(
        test.column("prompt_id").to_pylist(), test.column("prompt").to_pylist(), rewriters,
        config.evaluate, config.render, resolve_device(config.device), config.seed,
    )
    create_markdown_artifact(
        key="semdpo-metrics",
        markdown=f"# Sem-DPO evaluation\n\nTest prompts: {test.num_rows}; every image is scored against the "
        f"original prompt.\n\n```\n{format_metrics(summarize(evaluation))}\n```\n",
        description="mean score per method and metric",
    )
    return store.write_dataset(ref, EVALUATION, evaluation, meta={"test_prompts": test.num_rows})
