"""Candidates stage: sample k rewrites of every training prompt from the SFT rewriter."""

from __future__ import annotations

import pyarrow.compute as pc

from semdpo_core.candidates import sample_candidates
from semdpo_core.config import PipelineConfig
from semdpo_core.models import load_rewriter, resolve_device
from semdpo_core.schemas import CANDIDATES, PROMPTS
from semdpo_core.store import DatasetRef
from tasks.common import checkpoint_dir, open_store, stage_task


@stage_task("candidates")
def candidates(config: PipelineConfig, ref: DatasetRef, prompts: DatasetRef, sft: DatasetRef) -> DatasetRef:
    store = open_store(config)
    table = store.read_table(prompts, PROMPTS)
    train = table.filter(pc.equal(table.column("split"), "train"))
    model, tokenizer = load_rewriter(checkpoint_dir(config, sft), resolve_device(config.device))
    c = config.candidates
    out = sample_candidates(
        model, tokenizer, train.column("prompt_id").to_pylist(), train.column("prompt").to_pylist(),
        num_candidates=c.num_candidates, temperature=c.temperature, top_p=c.top_p,
        max_new_tokens=c.max_new_tokens, batch_size=c.batch_size, seed=config.seed,
    )
    return store.write_dataset(ref, CANDIDATES, out, meta={"prompts": train.num_rows})
