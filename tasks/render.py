"""Render stage: one Stable Diffusion image per candidate rewrite, with the candidate's seed."""

from __future__ import annotations

import pyarrow as pa

from semdpo_core.config import PipelineConfig
from semdpo_core.models import load_diffusion, resolve_device
from semdpo_core.render import render_images
from semdpo_core.schemas import CANDIDATES, IMAGES
from semdpo_core.store import DatasetRef
from tasks.common import open_store, stage_task


@stage_task("render")
def render(config: PipelineConfig, ref: DatasetRef, candidates: DatasetRef) -> DatasetRef:
    store = open_store(config)
    table = store.read_table(candidates, CANDIDATES)
    r = config.render
    pipe = load_diffusion(r.model, resolve_device(config.device))
    images = render_images(
        pipe, table.column("rewrite").to_pylist(), table.column("seed").to_pylist(),
        num_inference_steps=r.num_inference_steps, guidance_scale=r.guidance_scale,
        height=r.height, width=r.width, batch_size=r.batch_size,
    )
    out = pa.table(
        {"candidate_id": table.column("candidate_id"), "prompt_id": table.column("prompt_id"),
         "seed": table.column("seed"), "image": pa.array(images, pa.binary())}
    )
    return store.write_dataset(ref, IMAGES, out)
