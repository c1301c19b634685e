"""Each scorer loads a checkpoint in the official file format and scores as the original code does.

Every checkpoint here is saved from a tiny randomly initialised model of the original
architecture, built by the original code where it installs (ImageReward, HPSv2 through
tests/originals.py, under test-only shims: see there), and scored by both the original code
path and ours on the same images and prompts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from semdpo_core.pipeline.config import ScorerConfig
from semdpo_core.scorers import load_scorer
from tests import originals

PROMPTS = ["a red fox in deep snow", "a lighthouse on a cliff at dusk, oil painting", "two cups of coffee on a table"]
CPU = torch.device("cpu")


def images(sizes=((256, 192), (300, 300), (180, 240))) -> list[Image.Image]:
    """Random RGB images of odd sizes, so resizing and cropping are exercised."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def jitter(model: torch.nn.Module, scale: float, seed: int = 0) -> None:
    """Spread random weights so scores differ between inputs (a near-constant score proves nothing)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale)


def assert_same(ours: list[float], reference: list[float]) -> None:
    assert np.ptp(reference) > 1e-3, f"reference scores barely differ: {reference}"
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5)


def bert_vocab(folder: Path) -> Path:
    from transformers import BertTokenizer

    words = sorted({w.strip(",.").lower() for p in PROMPTS for w in p.split()} | {",", "."})
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


def test_image_reward_matches_the_original(tmp_path):
    IR = originals.image_reward()
    from ImageReward.models.BLIP import blip_pretrain
    from ImageReward.models.BLIP.vit import VisionTransformer
    from transformers import BertTokenizer

    repo = tmp_path / "ImageReward"
    tokenizer_dir = bert_vocab(repo / "tokenizer")
    vocab = len(BertTokenizer.from_pretrained(tokenizer_dir)) + 2  # BLIP adds [DEC] and [ENC]
    med = {"architectures": ["BertModel"], "hidden_size": 768,  # the original's MLP head is built for 768
           "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 12, "max_position_embeddings": 64,
           "vocab_size": vocab, "layer_norm_eps": 1e-12, "hidden_act": "gelu", "pad_token_id": 0, "model_type": "bert",
           "encoder_width": 768, "add_cross_attention": True, "hidden_dropout_prob": 0.1,
           "attention_probs_dropout_prob": 0.1, "type_vocab_size": 2, "initializer_range": 0.02}
    (repo / "med_config.json").write_text(json.dumps(med))

    def small_vit(vit, image_size, *args):  # the original hard-codes ViT-L; same class, fewer layers
        return VisionTransformer(img_size=image_size, patch_size=16, embed_dim=128, depth=2, num_heads=2), 128

    real_from_pretrained = BertTokenizer.from_pretrained.__func__
    local = classmethod(lambda cls, ref, *a, **k: real_from_pretrained(
        cls, tokenizer_dir if ref == "bert-base-uncased" else ref, *a, **k))
    torch.manual_seed(0)
    with mock.patch.object(blip_pretrain, "create_vit", small_vit), \
            mock.patch.object(BertTokenizer, "from_pretrained", local):
        original = IR.ImageReward(med_config=str(repo / "med_config.json"), device="cpu").eval()
    jitter(original, 0.05)
    torch.save(original.state_dict(), repo / "ImageReward.pt")  # the official file: a plain state dict

    with torch.no_grad():
        reference = [original.score(prompt, image) for prompt, image in zip(PROMPTS, images())]
    ours = load_scorer(ScorerConfig(kind="image_reward", model=str(repo)), CPU).score(images(), PROMPTS)
    assert_same(ours, reference)


def test_image_reward_names_what_is_missing(tmp_path):
    from semdpo_core.models.loading import ModelNotFound

    with pytest.raises(ModelNotFound, match="has no ImageReward.pt"):
        load_scorer(ScorerConfig(kind="image_reward", model=str(tmp_path)), CPU)
    with pytest.raises(ModelNotFound, match="THUDM/ImageReward.*hf download"):
        load_scorer(ScorerConfig(kind="image_reward", model="THUDM/ImageReward"), CPU)


TINY_VIT = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def test_hpsv2_matches_the_original(tmp_path):
    repo = tmp_path / "HPSv2"
    repo.mkdir()
    (repo / "tiny-hps-vit.json").write_text(json.dumps(TINY_VIT))
    with originals.hpsv2_open_clip() as hps_open_clip:
        from hpsv2 import img_score

        hps_open_clip.add_model_config(repo / "tiny-hps-vit.json")
        torch.manual_seed(0)
        model, _, preprocess_val = hps_open_clip.create_model_and_transforms(  # img_score's arguments, tiny model
            "tiny-hps-vit", None, precision="amp", device="cpu", jit=False, force_quick_gelu=False,
            force_custom_text=False, force_patch_dropout=False, force_image_size=None, pretrained_image=False,
            image_mean=None, image_std=None, light_augmentation=True, aug_cfg={}, output_dict=True,
            with_score_predictor=False, with_region_predictor=False,
        )
        jitter(model, 0.02)
        torch.save({"state_dict": model.state_dict()}, repo / "HPS_v2.1_compressed.pt")
        with mock.patch.dict(img_score.model_dict, {"model": model, "preprocess_val": preprocess_val}):
            reference = [
                float(img_score.score(image, prompt, cp=str(repo / "HPS_v2.1_compressed.pt"), hps_version="v2.1")[0])
                for prompt, image in zip(PROMPTS, images())
            ]
    scorer = load_scorer(ScorerConfig(kind="hpsv2", model=str(repo), architecture="tiny-hps-vit"), CPU)
    assert_same(scorer.score(images(), PROMPTS), reference)

    # the same file as a plain open_clip scorer (architecture + weights file) loads the same weights;
    # it preprocesses as open_clip does (centre crop), so only the text features can be compared
    plain = ScorerConfig(kind="open_clip", model=str(repo / "HPS_v2.1_compressed.pt"), architecture="tiny-hps-vit")
    torch.testing.assert_close(load_scorer(plain, CPU).embed(texts=PROMPTS), scorer.embed(texts=PROMPTS))


def clip_checkpoint(tmp_path: Path) -> Path:
    """A tiny random transformers CLIPModel with a CLIP processor, saved as a hub repo is laid out."""
    from transformers import CLIPModel

    from semdpo_core.models.loading import resolve

    repo = tmp_path / "clip"
    shutil.copytree(resolve("tiny:pickscore"), repo)
    model = CLIPModel.from_pretrained(repo)
    jitter(model, 0.05, seed=1)
    model.save_pretrained(repo)
    return repo


def features_as_in_transformers_4(model, **inputs):
    """get_image_features / get_text_features as transformers 4 returned them: projected tensors."""
    if "pixel_values" in inputs:
        return model.visual_projection(model.vision_model(pixel_values=inputs["pixel_values"]).pooler_output)
    text = model.text_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    return model.text_projection(text.pooler_output)


def test_pickscore_and_clip_score_match_the_published_rules(tmp_path):
    from transformers import AutoProcessor, CLIPModel

    repo = clip_checkpoint(tmp_path)
    model, processor = CLIPModel.from_pretrained(repo).eval(), AutoProcessor.from_pretrained(repo)
    reference = []
    with torch.no_grad():  # PickScore's published snippet, one prompt at a time
        for prompt, image in zip(PROMPTS, images()):
            image_inputs = processor(images=[image], padding=True, truncation=True, max_length=77, return_tensors="pt")
            text_inputs = processor(text=prompt, padding=True, truncation=True, max_length=77, return_tensors="pt")
            image_embs = features_as_in_transformers_4(model, **image_inputs)
            image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
            text_embs = features_as_in_transformers_4(model, **text_inputs)
            text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
            reference.append((model.logit_scale.exp() * (text_embs @ image_embs.T)[0]).item())
    assert_same(load_scorer(ScorerConfig(kind="pickscore", model=str(repo)), CPU).score(images(), PROMPTS), reference)

    # CLIP score: the model's own logits without the scale, i.e. the plain cosine (no x100)
    clip = load_scorer(ScorerConfig(kind="clip", model=str(repo)), CPU).score(images(), PROMPTS)
    with torch.no_grad():
        out = model(**processor(text=PROMPTS, images=images(), return_tensors="pt", padding=True))
    cosine = (out.logits_per_image.diagonal() / model.logit_scale.exp()).tolist()
    assert_same(clip, cosine)
    assert all(-1 <= c <= 1 for c in clip)


def test_blip_itm_matches_blips_own_modules(tmp_path):
    """BLIP-ITM's original code (salesforce/BLIP's blip_itm.py) is not packaged; its modules are, in
    the image-reward package (vit.py, med.py: BLIP's own files). Their forward pass is run here
    with blip_itm.py's steps, on the weights of a tiny HF BlipForImageTextRetrieval."""
    originals.image_reward()
    from ImageReward.models.BLIP.med import BertConfig, BertModel
    from ImageReward.models.BLIP.vit import VisionTransformer
    from torchvision import transforms as T
    from transformers import AutoTokenizer, BlipForImageTextRetrieval

    from semdpo_core.models.loading import resolve
    from semdpo_core.scorers.image_reward import to_official_key

    repo = tmp_path / "blip-itm"
    shutil.copytree(resolve("tiny:blip_itm"), repo)
    hf = BlipForImageTextRetrieval.from_pretrained(repo)
    jitter(hf, 0.05, seed=2)
    hf.save_pretrained(repo)
    v, t = hf.config.vision_config, hf.config.text_config

    visual_encoder = VisionTransformer(img_size=v.image_size, patch_size=v.patch_size, embed_dim=v.hidden_size,
                                       depth=v.num_hidden_layers, num_heads=v.num_attention_heads).eval()
    med = BertConfig(vocab_size=t.vocab_size, hidden_size=t.hidden_size, num_hidden_layers=t.num_hidden_layers,
                     num_attention_heads=t.num_attention_heads, intermediate_size=t.intermediate_size,
                     max_position_embeddings=t.max_position_embeddings, layer_norm_eps=t.layer_norm_eps,
                     pad_token_id=t.pad_token_id, add_cross_attention=True)
    med.encoder_width = v.hidden_size
    text_encoder = BertModel(config=med, add_pooling_layer=False).eval()
    itm_head = torch.nn.Linear(t.hidden_size, 2)
    state = hf.state_dict()
    vit = {to_official_key(k.replace("vision_model.", "vision.", 1)).removeprefix("blip.visual_encoder."): w
           for k, w in state.items() if k.startswith("vision_model.")}
    assert not visual_encoder.load_state_dict(vit, strict=False).missing_keys
    text = {k.removeprefix("text_encoder."): w for k, w in state.items() if k.startswith("text_encoder.")}
    assert not [k for k in text_encoder.load_state_dict(text, strict=False).missing_keys if "position_ids" not in k]
    itm_head.load_state_dict({"weight": state["itm_head.weight"], "bias": state["itm_head.bias"]})

    normalize = T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    transform = T.Compose([T.Resize((v.image_size, v.image_size), interpolation=T.InterpolationMode.BICUBIC),
                           T.ToTensor(), normalize])  # BLIP's demo/eval transform
    tokenizer = AutoTokenizer.from_pretrained(repo)
    reference = []
    with torch.no_grad():
        for prompt, image in zip(PROMPTS, images()):  # blip_itm.py, match_head="itm"
            image_embeds = visual_encoder(transform(image.convert("RGB")).unsqueeze(0))
            image_atts = torch.ones(image_embeds.size()[:-1], dtype=torch.long)
            caption = tokenizer(prompt, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
            output = text_encoder(caption.input_ids, attention_mask=caption.attention_mask,
                                  encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts,
                                  return_dict=True)
            itm_output = itm_head(output.last_hidden_state[:, 0, :])
            reference.append(torch.nn.functional.softmax(itm_output, dim=1)[:, 1].item())
    ours = load_scorer(ScorerConfig(kind="blip_itm", model=str(repo)), CPU).score(images(), PROMPTS)
    assert_same(ours, reference)
    assert all(0 < p < 1 for p in ours)


TINY_SCORERS = [
    ScorerConfig(kind="clip", model="tiny:clip"),
    ScorerConfig(kind="image_reward", model="tiny:image_reward"),
    ScorerConfig(kind="hpsv2", model="tiny:hpsv2", architecture="semdpo-tiny-vit"),
    ScorerConfig(kind="pickscore", model="tiny:pickscore"),
    ScorerConfig(kind="blip_itm", model="tiny:blip_itm"),
]


@pytest.mark.parametrize("config", TINY_SCORERS, ids=lambda c: c.kind)
def test_tiny_scorers_tell_images_apart(config):
    """The offline default labels pairs by these scores: one prompt, different images, clearly
    different scores (not float noise, which would make chosen/rejected arbitrary)."""
    scores = load_scorer(config, CPU).score(images(), [PROMPTS[0]] * 3)
    assert max(scores) - min(scores) > 1e-3, scores


@pytest.mark.parametrize("config", TINY_SCORERS, ids=lambda c: c.kind)
def test_scorers_in_the_cuda_dtype_agree_with_float32(config):
    """On CUDA the scorers run in fp16 (the dtype casts only a GPU would exercise): run that path
    here on CPU and compare with float32."""
    from semdpo_core.scorers import blip_itm, clip, hps, image_reward

    reference = load_scorer(config, CPU).score(images(), PROMPTS)
    half = lambda device: torch.float16  # noqa: E731
    with mock.patch.multiple(clip, inference_dtype=half), mock.patch.multiple(hps, inference_dtype=half), \
            mock.patch.multiple(image_reward, inference_dtype=half), \
            mock.patch.multiple(blip_itm, inference_dtype=half):
        scorer = load_scorer(config, CPU)
        scores = scorer.score(images(), PROMPTS)
    assert next(scorer.model.parameters()).dtype == torch.float16
    assert all(isinstance(s, float) for s in scores)
    np.testing.assert_allclose(scores, reference, rtol=0.02, atol=2e-3)
