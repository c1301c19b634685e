"""The synthetic world behind the pipeline's interfaces: prompt sources, render model, scorers, rewriter."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from semdpo_core.models.loading import ModelNotFound, load_diffusion
from semdpo_core.pipeline.config import ScorerConfig
from semdpo_core.scorers import load_scorer
from semdpo_core.stages.prompts import PromptFileError, read_records
from semdpo_core.stages.render import render_images
from semdpo_core.stages.sft import held_out_share, plain_content_words
from semdpo_core.world.grammar import content_words, is_reserved, parse
from semdpo_core.world.pixel_scorers import AlignmentScorer, PreferenceScorer
from semdpo_core.world.renderer import WorldRenderer

CPU = torch.device("cpu")


def test_world_sources_read_like_prompt_files_and_keep_test_combinations_out_of_train():
    train = [r.fields["prompt"] for r in read_records("world:train_prompts", ["prompt"])]
    captions = [r.fields["prompt"] for r in read_records("world:captions", ["prompt"])]
    pairs = read_records("world:sft_pairs", ["original", "rewrite"])
    assert (len(train), len(captions), len(pairs)) == (4000, 200, 4000)
    assert len(set(train)) == len(train) and not set(train) & set(captions)
    held_out = [p for p in captions if any(is_reserved(t.noun, parse(p).setting) for t in parse(p).things)]
    assert len(held_out) == len(captions)  # every test caption shows a held-out (object, setting) pair
    assert not [p for p in train
                if parse(p).setting and any(is_reserved(t.noun, parse(p).setting) for t in parse(p).things)]
    assert all(content_words(r.fields["original"]) <= content_words(r.fields["rewrite"]) for r in pairs)
    with pytest.raises(PromptFileError, match="world:captions"):
        read_records("world:nonsense", ["prompt"])


def test_render_stage_draws_the_world_deterministically_as_png():
    pipe = load_diffusion("world:renderer", CPU)
    prompts, seeds = ["a red fox in a desert", "a red fox in a desert, vivid colors"], [3, 3]
    settings = dict(num_inference_steps=1, guidance_scale=1.0, height=48, width=48, batch_size=1)
    first = render_images(pipe, prompts, seeds, **settings)
    # batch-independent, byte-identical
    assert first == render_images(pipe, prompts, seeds, **{**settings, "batch_size": 2})
    direct = WorldRenderer().render(prompts[:1], seeds[:1], 48, 48)[0]
    assert Image.open(io.BytesIO(first[0])).tobytes() == direct.tobytes()
    assert first[0] != first[1]  # the style word changed the image
    with pytest.raises(ModelNotFound, match="world:renderer"):
        load_diffusion("world:painter", CPU)


def test_world_scorers_load_by_config():
    assert isinstance(load_scorer(ScorerConfig(kind="world", model="world:alignment"), CPU), AlignmentScorer)
    pick = load_scorer(ScorerConfig(kind="world", model="world:pick"), CPU)
    assert isinstance(pick, PreferenceScorer) and pick.taste == "pick"
    with pytest.raises(ValueError, match="world:aesthetic"):
        load_scorer(ScorerConfig(kind="world", model="world:beauty"), CPU)


def test_sft_check_helpers():
    assert plain_content_words("A red fox, in the Desert!") == {"red", "fox", "desert"}
    assert held_out_share(4000, 256) == 256 and held_out_share(320, 256) == 32 and held_out_share(5, 256) == 0


def test_world_rewriter_tokenizer_round_trips_the_template():
    from semdpo_core.models.loading import load_rewriter
    from semdpo_core.models.rewriter import encode_pairs

    model, tokenizer = load_rewriter("tiny:world-rewriter", CPU)
    batch = encode_pairs(tokenizer, ["a red fox in a desert"], ["a red fox in a desert, vivid colors"], 96)
    assert tokenizer.unk_token_id not in batch["input_ids"][0].tolist()
    assert model.config.vocab_size == len(tokenizer) < 200


def test_a_single_world_test_set_is_named_after_its_dataset():
    from semdpo_core.pipeline.config import DataConfig

    assert DataConfig(test_prompts="world:styled").test_sets() == {"styled": "world:styled"}
    assert DataConfig(test_prompts="demo:test_prompts").test_sets() == {"demo": "demo:test_prompts"}
