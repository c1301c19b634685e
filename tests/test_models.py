"""Tiny models load back through the libraries' own from_pretrained with their real vocabularies."""

from pathlib import Path

import pytest
import torch

from semdpo_core.models.loading import (
    ModelNotFound,
    check_vocab,
    load_diffusion,
    load_rewriter,
    pretrained,
)
from semdpo_core.stages.weigh import SemanticEncoder
from tests.hub_cache import hub_cache_entry

CPU = torch.device("cpu")


def test_tiny_rewriter_and_diffusion_load_with_full_tokenizers():
    model, tokenizer = load_rewriter("tiny:rewriter", CPU)
    assert len(tokenizer) == model.config.vocab_size > 500
    assert tokenizer.decode(tokenizer("a red fox at sunset").input_ids) == "a red fox at sunset"
    pipe = load_diffusion("tiny:stable-diffusion", CPU)
    assert len(pipe.tokenizer) == 49408  # CLIP's real BPE vocabulary
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.vae_scale_factor == 8


def test_a_half_precision_checkpoint_trains_in_float32_and_samples_in_the_asked_dtype(tmp_path):
    """Qwen's checkpoints are bf16 and transformers 5 loads a checkpoint's own dtype: training
    must get float32 weights (a 5e-6 update rounds away in bf16); sampling may ask for half."""
    from semdpo_core.models.rewriter import generate

    model, tokenizer = load_rewriter("tiny:rewriter", CPU)
    model.to(torch.bfloat16).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    trained, _ = load_rewriter(str(tmp_path), CPU)
    assert {p.dtype for p in trained.parameters()} == {torch.float32}
    sampler, tokenizer = load_rewriter(str(tmp_path), CPU, torch.bfloat16)
    assert {p.dtype for p in sampler.parameters()} == {torch.bfloat16}
    rewrites = generate(sampler, tokenizer, ["a red fox", "a quiet lake"], num_return_sequences=2, do_sample=True,
                        max_new_tokens=6)
    assert [len(r) for r in rewrites] == [2, 2] and all(isinstance(t, str) for r in rewrites for t in r)


def test_almost_empty_tokenizer_is_refused():
    class Empty:
        def __len__(self):
            return 3

    with pytest.raises(ModelNotFound, match="tokenizer of 'some/model' has 3 tokens"):
        check_vocab(Empty(), 50257, "some/model")


def test_missing_model_names_the_id_and_how_to_provide_it(tmp_path):
    from transformers import AutoConfig

    with pytest.raises(ModelNotFound, match=r"cannot load model '.*no-such-model': local directory .* does not exist"):
        pretrained(AutoConfig, str(tmp_path / "no-such-model"))
    with pytest.raises(ModelNotFound,
                       match=r"(?s)cannot load model 'nobody/no-such-model'.*hf download nobody/no-such-model"):
        pretrained(AutoConfig, "nobody/no-such-model")


def test_offline_semantic_encoder_is_real_minilm():
    encoder = SemanticEncoder("sentence-transformers/all-MiniLM-L6-v2", CPU)
    e = encoder.encode(["a desert city at noon", "a city in the desert at midday", "a bowl of ramen"])
    assert e.shape == (3, 384)
    assert torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    # real weights: paraphrases are closer than unrelated prompts
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.3


def test_semantic_encoder_loads_a_full_clip_with_the_projection_the_checkpoint_has(tmp_path):
    """The paper's weigh encoder is a CLIP text tower taken from a full CLIP checkpoint; one saved
    with text_config.projection_dim != projection_dim (as transformers writes it) must load and
    embed exactly as CLIPModel.get_text_features does (issue 15)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from semdpo_core.models.loading import resolve

    tokenizer = CLIPTokenizer.from_pretrained(resolve("tiny:clip"))
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, projection_dim=512, eos_token_id=tokenizer.eos_token_id),
        vision_config=dict(image_size=32, patch_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2),
        projection_dim=24,
    )
    CLIPModel(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert CLIPConfig.from_pretrained(tmp_path).text_config.projection_dim != 24  # the case that failed
    texts = ["a desert city at noon", "a red fox in a snowy field"]
    e = SemanticEncoder(str(tmp_path), CPU).encode(texts)
    with torch.no_grad():
        reference = CLIPModel.from_pretrained(tmp_path).eval().get_text_features(**tokenizer(texts, padding=True,
                                                                                             return_tensors="pt"))
    reference = getattr(reference, "pooler_output", reference)  # transformers 5 may return an output object
    assert e.shape == (2, 24)
    assert torch.allclose(e, torch.nn.functional.normalize(reference, dim=-1), atol=1e-6)


def test_the_cuda_fast_path_renders_the_same_images():
    """channels_last, fused-QKV SDPA attention: faster on a GPU, the same images (run here on CPU)."""
    import numpy as np

    from semdpo_core.models.loading import diffusion_fast_path
    from semdpo_core.scorers import decode_png
    from semdpo_core.stages.render import render_images

    prompts, seeds = ["a red fox in snow", "a lighthouse at dusk"], [3, 4]
    settings = dict(num_inference_steps=2, guidance_scale=7.5, height=64, width=64, batch_size=2)
    plain = render_images(load_diffusion("tiny:stable-diffusion", CPU), prompts, seeds, **settings)
    pipe = diffusion_fast_path(load_diffusion("tiny:stable-diffusion", CPU))
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert {type(p).__name__ for p in pipe.unet.attn_processors.values()} == {"FusedAttnProcessor2_0"}
    assert {type(p).__name__ for p in pipe.vae.attn_processors.values()} == {"FusedAttnProcessor2_0"}
    fast = render_images(pipe, prompts, seeds, **settings)
    for a, b in zip(plain, fast):
        a, b = np.asarray(decode_png(a), dtype=int), np.asarray(decode_png(b), dtype=int)
        assert a.std() > 5  # real pictures, not a blank that would match anything
        assert np.abs(a - b).max() <= 1


def test_a_hub_id_in_the_local_cache_resolves_to_its_snapshot_folder(tmp_path, monkeypatch):
    """HPSv2 by hub id finds the open_clip config kept beside its checkpoint, as a folder does (issue 15)."""
    import huggingface_hub.constants
    from PIL import Image

    from semdpo_core.models.loading import cached_snapshot, resolve
    from semdpo_core.pipeline.config import ScorerConfig
    from semdpo_core.scorers import load_scorer

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    snapshot = hub_cache_entry(tmp_path, "xswu/HPSv2", Path(resolve("tiny:hpsv2")))
    assert cached_snapshot("xswu/HPSv2") == str(snapshot) == resolve("xswu/HPSv2")
    assert cached_snapshot("nobody/not-cached") is None and resolve("nobody/not-cached") == "nobody/not-cached"
    images, prompts = [Image.new("RGB", (64, 64), "orange")], ["an orange square"]
    by_id = load_scorer(ScorerConfig(kind="hpsv2", model="xswu/HPSv2", architecture="semdpo-tiny-vit"), CPU)
    by_folder = load_scorer(ScorerConfig(kind="hpsv2", model=str(snapshot), architecture="semdpo-tiny-vit"), CPU)
    assert by_id.score(images, prompts) == by_folder.score(images, prompts)
