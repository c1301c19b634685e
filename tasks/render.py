"""Render stage: one Stable Diffusion image per candidate rewrite, with the candidate's seed; one
shard per candidates part."""

from __future__ import annotations

import pyarrow as pa

from semdpo_core.config import PipelineConfig
from semdpo_core.models import resolve_device
from semdpo_core.render import render_images
from semdpo_core.schemas import CANDIDATES, IMAGES
from semdpo_core.store import DatasetRef
from tasks.common import ShardedStage, diffusion_model, open_store


def render_shard(config: PipelineConfig, shard: int, candidates: DatasetRef) -> pa.Table:
    table = open_store(config).read_part(candidates, shard, CANDIDATES)
    r = config.render
    pipe = diffusion_model(config, str(resolve_device(config.device)))
    images = render_images(
        pipe, table.column("rewrite").to_pylist(), table.column("seed").to_pylist(),
        num_inference_steps=r.num_inference_steps, guidance_scale=r.guidance_scale,
        height=r.height, width=r.width, batch_size=r.batch_size, desc=f"render shard {shard}",
    )
    return pa.table(
        {"candidate_id": table.column("candidate_id"), "prompt_id": table.column("prompt_id"),
         "seed": table.column("seed"), "image": pa.array(images, pa.binary())}
    )


render = ShardedStage("render", IMAGES, render_shard)
