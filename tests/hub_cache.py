"""A local Hugging Face hub cache, laid out as `hf download` leaves it, holding the project's own
tiny checkpoints under the ids the paper's configuration names."""

from __future__ import annotations

import shutil
from pathlib import Path

from semdpo_core.models.loading import resolve

REVISION = "0123456789abcdef0123456789abcdef01234567"

# hub id -> the tiny model of the same architecture and file layout
PAPER_IDS = {
    "Qwen/Qwen1.5-1.8B": "tiny:qwen2",
    "gpt2": "tiny:gpt2",
    "meta-llama/Llama-3.2-1B": "tiny:llama",
    "CompVis/stable-diffusion-v1-4": "tiny:stable-diffusion",
    "THUDM/ImageReward": "tiny:image_reward",
    "bert-base-uncased": "tiny:image_reward/tokenizer",
    "xswu/HPSv2": "tiny:hpsv2",
    "yuvalkirstain/PickScore_v1": "tiny:pickscore",
    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K": "tiny:pickscore",
    "openai/clip-vit-large-patch14": "tiny:clip",
}


def hub_cache_entry(cache: Path, repo_id: str, folder: Path) -> Path:
    """`folder` as the local Hugging Face cache holds a downloaded repo: refs/main + snapshots/<revision>/."""
    entry = cache / f"models--{repo_id.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(REVISION)
    shutil.copytree(folder, entry / "snapshots" / REVISION)
    return entry / "snapshots" / REVISION


def tiny_folder(ref: str) -> Path:
    """The folder of `tiny:NAME` or of a subfolder of it (`tiny:NAME/sub`)."""
    name, _, sub = ref.partition("/")
    return Path(resolve(name)) / sub if sub else Path(resolve(name))


def paper_hub_cache(cache: Path) -> Path:
    """A hub cache holding a tiny checkpoint under every id of configs/paper.yaml and its backbones."""
    for repo_id, ref in PAPER_IDS.items():
        hub_cache_entry(cache, repo_id, tiny_folder(ref))
    return cache
