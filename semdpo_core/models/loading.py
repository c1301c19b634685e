"""Model references and loading: one code path for tiny and real models.

A reference is a Hugging Face id, a local directory, or `tiny:NAME` (built on first use into the
model cache, then loaded from there). Everything loads through the libraries' own
`from_pretrained`. A model that cannot be found gives one error naming it and how to provide it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from semdpo_core.models.locate import (  # noqa: F401 (re-exported)
    ModelNotFound,
    cached_snapshot,
    locate,
    model_cache_dir,
)
from semdpo_core.models.tiny import ensure_tiny
from semdpo_core.world.renderer import WorldRenderer

log = logging.getLogger("semdpo.models")


def resolve(ref: str) -> str:
    """A path or hub id that `from_pretrained` can load for `ref`: a tiny model is built on first use."""
    if ref.startswith("tiny:"):
        return str(ensure_tiny(ref.removeprefix("tiny:"), model_cache_dir()))
    return locate(ref)


def pretrained(loader: Any, ref: str, **kwargs: Any) -> Any:
    """`loader.from_pretrained(resolve(ref))`, with a clear error when the model is not here."""
    target = resolve(ref)
    if target.startswith(("/", ".", "~")) and not Path(target).expanduser().exists():
        raise ModelNotFound(f"cannot load model {ref!r}: local directory {target} does not exist")
    try:
        return loader.from_pretrained(target, **kwargs)
    except OSError as e:
        raise ModelNotFound(
            f"cannot load model {ref!r} with {getattr(loader, '__name__', loader)}: {e}\n"
            f"Provide it as a local directory (set the config field to its path), or put it in the "
            f"local Hugging Face cache first (`hf download {ref}` on a machine with network access)."
        ) from None


def model_file(ref: str, filename: str) -> Path:
    """A checkpoint file of a model given as a file, a directory, `tiny:NAME` or a hub repo id
    (the local Hugging Face cache only: nothing is downloaded)."""
    target = Path(resolve(ref)).expanduser()
    if target.is_file():
        return target
    if target.is_dir():
        if (target / filename).is_file():
            return target / filename
        raise ModelNotFound(f"model {ref!r}: {target} has no {filename}; put the official {filename} there")
    if ref.startswith(("/", ".", "~")):
        raise ModelNotFound(f"model {ref!r}: {target} does not exist")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=ref, filename=filename, local_files_only=True))
    except Exception as e:  # LocalEntryNotFoundError, HFValidationError, ...
        raise ModelNotFound(
            f"cannot find {filename} of model {ref!r} here ({type(e).__name__}). Give the config field the "
            f"path of a local copy, or fetch it into the Hugging Face cache first (`hf download {ref} {filename}` "
            "on a machine with network access)."
        ) from None


def resolve_device(name: str = "auto") -> torch.device:
    """CUDA when present (or asked for), else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but torch sees no CUDA device; use device: auto or cpu")
    return torch.device(name)


def inference_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA (as the SD and scorer reference code run), fp32 on CPU."""
    return torch.float16 if device.type == "cuda" else torch.float32


def generation_dtype(device: torch.device) -> torch.dtype:
    """The rewriter's dtype for sampling: bf16 on CUDA where supported (fp16 otherwise), half the
    weight bytes read per token; fp32 on CPU."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_rewriter(ref: str, device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """A causal LM in `dtype` and its tokenizer, checked to be the real one. fp32 by default, for
    training: transformers 5 would load the checkpoint's own dtype (bf16 for Qwen1.5), in which
    a 5e-6 learning-rate update rounds away; autocast gives the speed instead."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = pretrained(AutoTokenizer, ref)
    model = pretrained(AutoModelForCausalLM, ref, dtype=dtype).to(device)
    check_vocab(tokenizer, model.config.vocab_size, ref)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def check_vocab(tokenizer: Any, model_vocab_size: int, ref: str) -> None:
    """Refuse a tokenizer that is almost empty (transformers 5 returns one for a missing id)."""
    if len(tokenizer) < 100 or len(tokenizer) > model_vocab_size + 1024:
        raise ModelNotFound(
            f"tokenizer of {ref!r} has {len(tokenizer)} tokens but the model has {model_vocab_size}: "
            "the tokenizer files are missing or wrong; provide the model's own tokenizer files"
        )


WORLD_RENDERER = "world:renderer"


def load_diffusion(ref: str, device: torch.device, compile_unet: bool = False) -> Any:
    """A Stable Diffusion pipeline with the DDIM scheduler, safety checker off, progress bar quiet;
    or, for `world:renderer`, the synthetic world's procedural renderer (CPU, no weights)."""
    if ref.startswith("world:"):
        if ref != WORLD_RENDERER:
            raise ModelNotFound(f"unknown world model {ref!r} for render.model; "
                                f"the world's renderer is {WORLD_RENDERER!r}")
        return WorldRenderer()
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = pretrained(
        StableDiffusionPipeline, ref, dtype=inference_dtype(device), safety_checker=None,
        requires_safety_checker=False,
    )
    check_vocab(pipe.tokenizer, pipe.text_encoder.config.vocab_size, ref)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return optimize_for_inference(pipe.to(device), compile_unet)


def optimize_for_inference(pipe: Any, compile_unet: bool = False) -> Any:
    """The fast path on CUDA (`diffusion_fast_path`); on CPU the pipeline is left as it is."""
    return diffusion_fast_path(pipe, compile_unet) if pipe.device.type == "cuda" else pipe


def diffusion_fast_path(pipe: Any, compile_unet: bool = False) -> Any:
    """Faster, same images: channels_last UNet and VAE (fp16 tensor-core convolutions), PyTorch
    SDPA attention with fused QKV projections (one matmul instead of three), and, if asked, a
    compiled UNet (diffusers' "accelerate inference" recipe)."""
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    pipe.fuse_qkv_projections()  # UNet and VAE; sets FusedAttnProcessor2_0, SDPA with fused weights
    if compile_unet:
        pipe.unet = torch.compile(pipe.unet, fullgraph=True)
    return pipe
