"""Tiny random-weight models with the real architectures (configs/tiny.yaml), and the world's rewriter.

Each is built deterministically from a seed, saved with `save_pretrained` and from then on loaded
like any other model, with the libraries' own `from_pretrained`. Their outputs mean nothing;
the code path around them is the real one. Bump TINY_VERSION when a builder changes.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from semdpo_core.data.prompt_sources import read_records
from semdpo_core.models.image_reward_net import ImageRewardModel, add_blip_tokens
from semdpo_core.world.tokenizer import build_tokenizer

TINY_VERSION = 6
CLIP_MAX_LENGTH = 77


def build_rewriter(path: Path, seed: int) -> None:
    """A GPT-2 style causal LM with a byte-level BPE tokenizer trained on the demo text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    texts = [r.fields["prompt"] for s in ("train_prompts", "test_prompts")
             for r in read_records(f"demo:{s}", ["prompt"])]
    texts += [v for r in read_records("demo:sft_pairs", ["original", "rewrite"]) for v in r.fields.values()]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    tokenizer.model_max_length = 128
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def _demo_bpe_tokenizer(special_tokens: list[str], **tokens: str | None) -> Any:
    """A byte-level BPE tokenizer trained on the demo text, with the given special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [r.fields["prompt"] for s in ("train_prompts", "test_prompts")
             for r in read_records(f"demo:{s}", ["prompt"])]
    texts += [v for r in read_records("demo:sft_pairs", ["original", "rewrite"]) for v in r.fields.values()]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, **{k: v for k, v in tokens.items() if v is not None})
    tokenizer.model_max_length = 128
    return tokenizer


def build_gpt2(path: Path, seed: int) -> None:
    """GPT-2's layout at toy width, its tokenizer without a pad token (as `gpt2` on the hub)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = _demo_bpe_tokenizer(["<|endoftext|>"], bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    torch.manual_seed(seed)
    eos = tokenizer.eos_token_id
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=64, n_layer=2, n_head=2,
                               bos_token_id=eos, eos_token_id=eos)).save_pretrained(path)
    tokenizer.save_pretrained(path)


def build_llama(path: Path, seed: int) -> None:
    """Llama 3.2's architecture at toy width (grouped-query attention, RoPE, tied embeddings), its
    tokenizer with Llama 3's begin/end-of-text tokens and no pad token (as meta-llama/Llama-3.2-1B)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _demo_bpe_tokenizer(["<|begin_of_text|>", "<|end_of_text|>"], bos_token="<|begin_of_text|>",
                                    eos_token="<|end_of_text|>")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def build_qwen2(path: Path, seed: int) -> None:
    """Qwen1.5's architecture (Qwen2) at toy width; its tokenizer pads with <|endoftext|>, its EOS."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = _demo_bpe_tokenizer(["<|endoftext|>"], eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(seed)
    eos = tokenizer.eos_token_id
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                         tie_word_embeddings=False, eos_token_id=eos, pad_token_id=eos)
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


WORLD_REWRITER = dict(n_positions=128, n_embd=128, n_layer=4, n_head=4)  # about 0.8M parameters


def build_world_rewriter(path: Path, seed: int) -> None:
    """A GPT-2 causal LM over the synthetic world's word-level vocabulary (semdpo_core.world.tokenizer):
    small enough to learn, on a CPU in a minute of SFT, to copy a prompt and append style words."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    eos = tokenizer.eos_token_id
    config = GPT2Config(vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
                        **WORLD_REWRITER)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def _clip_tokenizer(path: Path) -> None:
    """CLIP's real BPE vocabulary, taken from open_clip's packaged file, as a transformers tokenizer."""
    import open_clip.tokenizer as oct
    from transformers import CLIPTokenizer

    merges = gzip.open(oct.default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(oct.bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = CLIPTokenizer(
        vocab={t: i for i, t in enumerate(vocab)},
        merges=[tuple(m.split()) for m in merges],
        model_max_length=CLIP_MAX_LENGTH,
    )
    if len(tokenizer) != len(vocab):
        raise RuntimeError(f"CLIP tokenizer has {len(tokenizer)} tokens, expected {len(vocab)}")
    tokenizer.save_pretrained(path)


def build_stable_diffusion(path: Path, seed: int) -> None:
    """Stable Diffusion's pipeline at toy width: UNet, 8x-downsampling VAE, CLIP text encoder, DDIM."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    _clip_tokenizer(path / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer")
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=CLIP_MAX_LENGTH, projection_dim=32,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=8, sample_size=64,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(path)


def build_clip(path: Path, seed: int) -> None:
    """A CLIP dual encoder (transformers CLIPModel) with a CLIP processor, at toy width."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    _clip_tokenizer(path)
    tokenizer = CLIPTokenizer.from_pretrained(path)
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=CLIP_MAX_LENGTH,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, projection_dim=32,
        ),
        vision_config=dict(
            image_size=64, patch_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, projection_dim=32,
        ),
        projection_dim=32,  # the same in all three places, as the released CLIP checkpoints have it
    )
    image_processor = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    CLIPModel(config).save_pretrained(path)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)


def _demo_words() -> list[str]:
    """The lower-cased words of the demo text, for a tiny BERT WordPiece vocabulary."""
    texts = [r.fields["prompt"] for s in ("train_prompts", "test_prompts")
             for r in read_records(f"demo:{s}", ["prompt"])]
    return sorted({w for t in texts for w in re.findall(r"[a-z0-9]+|[^\sa-z0-9]", t.lower())})


def _blip_tokenizer(folder: Path) -> Any:
    """A BERT WordPiece tokenizer over the demo words, saved in `folder`, loaded back with the two
    special tokens BLIP adds ([DEC], [ENC])."""
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + _demo_words()
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    return add_blip_tokens(BertTokenizer.from_pretrained(str(folder)))


def build_image_reward(path: Path, seed: int) -> None:
    """ImageReward's files at toy width: ImageReward.pt (official key names), med_config.json and
    a BERT tokenizer folder, exactly the layout of the THUDM/ImageReward repo plus its tokenizer."""
    from transformers import BlipTextConfig, BlipVisionConfig

    vocab_size = len(_blip_tokenizer(path / "tokenizer"))  # + [DEC] and [ENC], as BLIP adds them
    med_config = {
        "architectures": ["BertModel"], "hidden_act": "gelu", "hidden_size": 64, "intermediate_size": 128,
        "layer_norm_eps": 1e-12, "max_position_embeddings": 64, "model_type": "bert", "num_attention_heads": 2,
        "num_hidden_layers": 2, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": vocab_size,
        "encoder_width": 128, "add_cross_attention": True, "attention_probs_dropout_prob": 0.1,
        "hidden_dropout_prob": 0.1, "initializer_range": 0.02,
    }
    (path / "med_config.json").write_text(json.dumps(med_config, indent=2))
    torch.manual_seed(seed)
    # BLIP's vision default initializer_range is 1e-10 (real checkpoints overwrite it): at random
    # init every image would then look the same to the reward, so the tiny build uses BERT's 0.02.
    vision = BlipVisionConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2,
                              image_size=64, patch_size=16, layer_norm_eps=1e-6, initializer_range=0.02)
    text = BlipTextConfig(vocab_size=vocab_size, hidden_size=64, encoder_hidden_size=128, intermediate_size=128,
                          num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64, is_decoder=True,
                          bos_token_id=None, eos_token_id=None, sep_token_id=None)
    model = ImageRewardModel(vision, text)
    for layer in model.head.layers:  # variance-preserving head, so rewards differ between images (no ties)
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.normal_(layer.weight, std=layer.in_features**-0.5)
    torch.save(model.official_state_dict(), path / "ImageReward.pt")


def build_blip_itm(path: Path, seed: int) -> None:
    """BLIP with its image-text matching head (BlipForImageTextRetrieval) at toy width, saved with
    save_pretrained next to a BERT tokenizer carrying BLIP's [DEC] and [ENC] tokens."""
    from transformers import BlipConfig, BlipForImageTextRetrieval

    tokenizer = _blip_tokenizer(path)
    torch.manual_seed(seed)
    config = BlipConfig(
        vision_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=16, layer_norm_eps=1e-6, initializer_range=0.02),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=64, encoder_hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.sep_token_id,
                         sep_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id),
        projection_dim=32, image_text_hidden_size=32,
    )
    model = BlipForImageTextRetrieval(config)
    torch.nn.init.normal_(model.itm_head.weight, std=model.itm_head.in_features**-0.5)  # scores that tell images apart
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


TINY_OPEN_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def build_hpsv2(path: Path, seed: int) -> None:
    """HPSv2.1's file layout at toy width: an open_clip model config (`semdpo-tiny-vit.json`) and
    `HPS_v2.1_compressed.pt`, a dict holding `state_dict` as the official file does."""
    import open_clip

    path.mkdir(parents=True, exist_ok=True)
    (path / "semdpo-tiny-vit.json").write_text(json.dumps(TINY_OPEN_CLIP, indent=2))
    open_clip.add_model_config(path)
    torch.manual_seed(seed)
    model = open_clip.create_model("semdpo-tiny-vit")
    torch.save({"state_dict": model.state_dict()}, path / "HPS_v2.1_compressed.pt")


BUILDERS: dict[str, tuple[Callable[[Path, int], None], int]] = {
    # name: (builder, seed)
    "rewriter": (build_rewriter, 1),
    "stable-diffusion": (build_stable_diffusion, 2),
    "clip": (build_clip, 3),
    "pickscore": (build_clip, 4),
    "image_reward": (build_image_reward, 5),
    "hpsv2": (build_hpsv2, 6),
    "blip_itm": (build_blip_itm, 7),
    "world-rewriter": (build_world_rewriter, 8),
    # the paper's backbones' architectures and tokenizer conventions (configs/paper.yaml's ids)
    "gpt2": (build_gpt2, 9),
    "llama": (build_llama, 10),
    "qwen2": (build_qwen2, 11),
}


def ensure_tiny(name: str, cache_dir: Path) -> Path:
    """The local directory of tiny model `name`, built (atomically) on first use."""
    if name not in BUILDERS:
        raise ValueError(f"unknown tiny model 'tiny:{name}'; choose one of {', '.join(BUILDERS)}")
    builder, seed = BUILDERS[name]
    target = cache_dir / f"{name}-v{TINY_VERSION}-seed{seed}"
    if (target / ".complete").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{name}-"))
    try:
        builder(tmp, seed)
        (tmp / ".complete").write_text("built by semdpo_core.models.tiny\n")
        if not (target / ".complete").is_file():  # else a concurrent build finished first
            shutil.rmtree(target, ignore_errors=True)  # a half-built leftover from a crash
            tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
