"""The weigh stage: offline semantic distances d(x, y_w) = 1 - cos(e(x), e(y_w)); Sem-DPO's W = exp(-alpha * d).

The distances do not depend on alpha, so an alpha sweep reuses them; the trainer turns them
into weights once, before its loop.

e is a frozen text encoder, loaded once: a CLIP text tower (the paper's choice) or a
sentence-transformers model with mean pooling (all-MiniLM-L6-v2 in the offline default).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from semdpo_core.models.inference import loaded
from semdpo_core.models.loading import check_vocab, pretrained, resolve
from semdpo_core.pipeline.stage_context import StageContext
from semdpo_core.stages.pairs import pairs_shard


def clip_text_config(config: Any) -> Any:
    """The text tower's config of a full CLIP checkpoint, with the projection the checkpoint has.

    A full CLIP keeps its projection size at the top level (`projection_dim`); its
    `text_config.projection_dim` may differ (transformers writes its own default there), and
    CLIPTextModelWithProjection sizes its projection from the latter, so the text tower of such
    a checkpoint would not load."""
    text = config.text_config
    text.projection_dim = config.projection_dim
    return text


class SemanticEncoder:
    """A frozen text encoder giving L2-normalised embeddings."""

    def __init__(self, ref: str, device: torch.device):
        from transformers import (
            AutoConfig,
            AutoModel,
            AutoTokenizer,
            CLIPTextModelWithProjection,
        )

        config = pretrained(AutoConfig, ref)
        self.is_clip = config.model_type in ("clip", "clip_text_model")
        if config.model_type == "clip":
            self.model = pretrained(CLIPTextModelWithProjection, ref, config=clip_text_config(config))
        else:
            self.model = pretrained(CLIPTextModelWithProjection if self.is_clip else AutoModel, ref)
        self.model = self.model.to(device).eval()
        self.tokenizer = pretrained(AutoTokenizer, ref)
        check_vocab(self.tokenizer, self.model.config.vocab_size, ref)
        self.device = device
        self.max_length = min(getattr(self.tokenizer, "model_max_length", 512), 512)
        if self.is_clip:
            self.max_length = 77
        local = Path(resolve(ref)) / "sentence_bert_config.json"
        if local.is_file():
            self.max_length = json.loads(local.read_text()).get("max_seq_length", self.max_length)

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Unit-norm embeddings, shape [len(texts), dim], on the CPU."""
        out = []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer(
                texts[start : start + batch_size], padding=True, truncation=True,
                max_length=self.max_length, return_tensors="pt",
            ).to(self.device)
            if self.is_clip:
                emb = self.model(**enc).text_embeds
            else:
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(F.normalize(emb.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.empty(0, 0)


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cos(a_i, b_i) for each row pair of two [n, dim] tensors."""
    return 1.0 - F.cosine_similarity(a, b, dim=-1)


def semantic_distances(encoder: Any, prompts: list[str], chosen: list[str], batch_size: int,
                       desc: str = "weigh") -> list[float]:
    """Per pair: the semantic distance d(x, y_w) between the prompt and the chosen rewrite."""
    distances = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch"):
        stop = start + batch_size
        d = cosine_distance(encoder.encode(prompts[start:stop], batch_size),
                            encoder.encode(chosen[start:stop], batch_size))
        distances.append(d.clamp(min=0.0))
    return torch.cat(distances).double().tolist() if distances else []


def weigh_shard(ctx: StageContext, shard: int) -> pa.Table:
    """Shard `shard`'s pairs with the semantic distance of each chosen rewrite from its prompt (DISTANCES)."""
    s = ctx.settings
    table = pairs_shard(ctx.store, ctx.inputs["pairs"], shard, s.shard_size)
    encoder = loaded(SemanticEncoder, s.encoder, ctx.device)
    distance = semantic_distances(encoder, table.column("prompt").to_pylist(), table.column("chosen").to_pylist(),
                                  s.batch_size)
    return table.append_column("semantic_distance", pa.array(distance, pa.float64()))
