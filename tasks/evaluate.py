"""Evaluate stage, one shard per method: the method rewrites the test prompts, the images share
per-prompt seeds across methods, and every image is scored against the ORIGINAL prompt."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from semdpo_core.config import PipelineConfig
from semdpo_core.evaluate import evaluate_method
from semdpo_core.models import resolve_device
from semdpo_core.schemas import EVALUATION, PROMPTS
from semdpo_core.store import DatasetRef
from tasks.common import ShardedStage, checkpoint_dir, diffusion_model, inference_model, open_store, scorer_model


def evaluate_shard(
    config: PipelineConfig, shard: int, prompts: DatasetRef, methods: list[str], checkpoints: dict[str, DatasetRef]
) -> pa.Table:
    """Shard i evaluates methods[i]; `checkpoints` maps each rewriting method to its checkpoint."""
    table = open_store(config).read_table(prompts, PROMPTS)
    test = table.filter(pc.equal(table.column("split"), "test")).select(["dataset", "prompt_id", "prompt"]).to_pydict()
    method, device = methods[shard], str(resolve_device(config.device))
    # human input keeps its prompts; the SFT rewriter's tokenizer counts their tokens like every other method's
    rewriter = inference_model("rewriter", checkpoint_dir(config, checkpoints["sft" if method == "human" else method]), device)
    pipe = diffusion_model(config, device)
    scorers = {name: scorer_model(s, device) for name, s in config.evaluate.scorers.items()}
    encoder = inference_model("encoder", config.weigh.encoder, device)
    return evaluate_method(method, test, rewriter, pipe, scorers, encoder, config.evaluate, config.render, config.seed)


evaluate = ShardedStage("evaluate", EVALUATION, evaluate_shard)
