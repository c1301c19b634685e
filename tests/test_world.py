"""The synthetic text-to-image world (semdpo_core.world): its grammar reads and writes prompts by its
documented rules, the renderer draws exactly what a prompt names, the scorers' answers are known on
hand-made images, and the intended dynamics hold: good style words raise preference at the same
alignment, a lush setting in place of a plain one raises preference but lowers alignment, harmful
style words lower preference. Margins were measured once (see each test) and are not tuned."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from semdpo_core.models.rewriter import pose
from semdpo_core.scorers import encode_png
from semdpo_core.world import grammar as g
from semdpo_core.world.grammar import Scene, Thing, content_words, parse
from semdpo_core.world.pixel_scorers import (
    AlignmentScorer,
    PreferenceScorer,
    detect_objects,
    image_statistics,
)
from semdpo_core.world.renderer import STYLE_EFFECTS, WorldRenderer, render_scene

RENDERER = WorldRenderer()
ALIGN = AlignmentScorer()
TASTES = ("aesthetic", "pick")
PREFER = {t: PreferenceScorer(t) for t in TASTES}


def pixels(prompt: str, seed: int = 0, size: int = 64) -> np.ndarray:
    """Float RGB of one rendered prompt."""
    return np.asarray(RENDERER.render([prompt], [seed], size, size)[0], dtype=np.float32) / 255.0


def image(array: np.ndarray) -> Image.Image:
    """A hand-made float RGB array as a PIL image."""
    return Image.fromarray(np.round(np.clip(array, 0, 1) * 255).astype(np.uint8), "RGB")


def random_scenes(n: int, seed: int, kind: str = "train") -> list[Scene]:
    """n random unstyled train-distribution scenes with a setting."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        s = g.random_scene(rng, held_out=False, kind=kind)
        if s.setting:
            out.append(Scene(s.things, s.setting, ()))
    return out


# --------------------------------------------------------------------------------------------- grammar


def test_parse_reads_by_the_documented_rules():
    scene = parse("Two SMALL red Foxes, near a Big violet cottage in the desert; vivid colors, xyzzy, vivid colors")
    assert scene == Scene((Thing("fox", "red", "small", 2), Thing("house", "purple", "large", 1)), "desert",
                          ("vivid colors",))
    assert parse("a red blue fox").things == (Thing("fox", "blue"),)  # a later colour replaces a waiting one
    assert parse("a fox in the desert, in a forest").setting == "forest"  # the last setting wins
    assert parse("a fox, red").things == (Thing("fox"),)  # a colour with no noun after it is dropped
    assert parse("a snowy field").setting == "snowy field" and parse("on a snowfield").setting == "snowy field"
    assert parse("at night").setting == "night sky" and parse("under the starry sky").setting == "night sky"
    assert parse("a sailboat").things == (Thing("boat"),) and parse("xyzzy plugh") == Scene()
    assert parse("A red fox!") == parse("a red fox")


def test_describe_writes_prompts_that_parse_back_to_their_scene():
    rng = np.random.default_rng(0)
    for kind in ("train", "captions", "scenes", "styled"):
        for _ in range(150):
            scene = g.random_scene(rng, held_out=kind != "train", kind=kind)
            assert parse(g.describe(scene, rng, synonyms=0.5, reorder=0.5)) == scene


def test_content_words_are_canonical_and_bound_to_their_noun():
    assert content_words("two small red foxes in the desert, vivid colors") == {
        "fox", "two fox", "red fox", "small fox", "desert"}
    assert (content_words("a big violet cottage on a snowfield")
            == content_words("a large purple house in a snowy field"))
    assert not content_words("a red fox") <= content_words("a blue fox")
    assert not content_words("a fox") <= content_words("two foxes")


def test_prompt_sets_are_deterministic_distinct_and_held_out():
    train = g.train_prompts(2000, seed=3)
    assert train == g.train_prompts(2000, seed=3) and train != g.train_prompts(2000, seed=4)
    assert len(set(train)) == 2000
    tests = g.test_sets(100, seed=3)
    assert tests == g.test_sets(100, seed=3) and set(tests) == {"captions", "scenes", "styled"}
    train_pairs = set().union(*(g.scene_pairs(parse(p)) for p in train))
    assert all(not g.is_reserved(o, s) for o, s in train_pairs)
    for name, prompts in tests.items():
        assert len(set(prompts)) == 100
        for p in prompts:
            scene = parse(p)
            assert scene.setting and scene.things and g.scene_pairs(scene).isdisjoint(train_pairs), (name, p)
    # each set has its documented character
    assert all(len(parse(p).things) == 1 and not parse(p).styles and parse(p).things[0].count == 1
               for p in tests["captions"])
    assert all(any(t.size or t.count > 1 for t in parse(p).things) for p in tests["scenes"])
    assert all(parse(p).styles for p in tests["styled"]) and not any(parse(p).styles for p in tests["scenes"])
    # every object and every setting occurs in both train and test
    test_pairs = set().union(*(g.scene_pairs(parse(p)) for ps in tests.values() for p in ps))
    for pairs in (train_pairs, test_pairs):
        assert {o for o, _ in pairs} == set(g.OBJECT_INDEX) and {s for _, s in pairs} == set(g.SETTING_INDEX)


def test_sft_pairs_keep_the_content_and_append_styles():
    pairs = g.sft_pairs(600, seed=0)
    assert pairs == g.sft_pairs(600, seed=0)
    reworded = 0
    kinds = {"good": 0, "harmful": 0, "neutral": 0}
    effect = {name: s.effect for s in g.STYLES for name in (s.name, *s.synonyms)}
    for original, rewrite in pairs:
        assert content_words(original) <= content_words(rewrite), (original, rewrite)
        assert all(not g.is_reserved(o, s) for o, s in g.scene_pairs(parse(original)))
        added = [s for s in parse(rewrite).styles if s not in parse(original).styles]
        assert 1 <= len(added) <= 4, (original, rewrite)
        reworded += not rewrite.startswith(original + ", ")
        for style in added:
            kinds[effect[style]] += 1
    assert 0.06 <= reworded / len(pairs) <= 0.2
    assert kinds["good"] > 2 * (kinds["harmful"] + kinds["neutral"]) and kinds["harmful"] > 0 and kinds["neutral"] > 0


# --------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_reproduces_every_generated_text_without_unknowns(tmp_path):
    from transformers import AutoTokenizer

    from semdpo_core.world.tokenizer import build_tokenizer

    tok = build_tokenizer()
    texts = g.train_prompts(300, seed=1) + [t for pair in g.sft_pairs(300, seed=1) for t in pair]
    texts += [p for ps in g.test_sets(50, seed=1).values() for p in ps]
    for text in texts:
        ids = tok(text, add_special_tokens=False).input_ids
        assert tok.unk_token_id not in ids, text
        assert tok.decode(ids) == text
    posed = tok(pose(texts[0]), add_special_tokens=False).input_ids
    assert tok.unk_token_id not in posed and tok.convert_ids_to_tokens(posed)[-2:] == ["Rewrite", ":"]
    assert tok(" " + texts[0], add_special_tokens=False).input_ids == tok(texts[0], add_special_tokens=False).input_ids
    assert tok("a fox xyzzy", add_special_tokens=False).input_ids[-1] == tok.unk_token_id
    assert tok.eos_token == tok.pad_token == tok.bos_token == "<|endoftext|>"
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert [loaded(t).input_ids for t in texts[:50]] == [tok(t).input_ids for t in texts[:50]]
    assert len(loaded) == len(tok) == len(g.VOCABULARY) + 2


# --------------------------------------------------------------------------------------------- renderer


def test_rendering_is_deterministic_and_independent_of_the_batch():
    prompts = ["a red fox in a snowy field", "two small boats on the ocean, vivid colors", "a cat at night, hazy"]
    alone = [encode_png(RENDERER.render([p], [s], 64, 64)[0]) for p, s in zip(prompts, [5, 6, 7])]
    batch = [encode_png(im) for im in RENDERER.render(prompts, [5, 6, 7], 64, 64)]
    again = [encode_png(im) for im in RENDERER.render(prompts[::-1], [7, 6, 5], 64, 64)][::-1]
    assert alone == batch == again
    assert RENDERER.render(prompts[:1], [5], 48, 80)[0].size == (80, 48)


def test_unknown_words_change_nothing():
    for size in (64, 128):
        a = RENDERER.render(["a red fox xyzzy", "Plugh, a RED fox."], [3, 3], size, size)
        b = RENDERER.render(["a red fox"], [3], size, size)
        assert encode_png(a[0]) == encode_png(a[1]) == encode_png(b[0])


def test_the_seed_moves_the_objects_and_the_texture():
    red = [np.all(pixels("a red fox in a meadow", seed) == np.float32(np.array([219, 31, 26]) / 255), axis=-1)
           for seed in range(4)]
    assert all(r.sum() > 50 for r in red)
    centres = {tuple(np.round(np.argwhere(r).mean(axis=0))) for r in red}
    assert len(centres) == 4
    meadow = [pixels("a meadow", seed) for seed in range(2)]
    assert not np.array_equal(meadow[0], meadow[1])


def test_the_setting_and_styles_keep_the_layout():
    fox = [np.argwhere(np.all(pixels(p, 9) == np.float32(np.array([219, 31, 26]) / 255), axis=-1)).mean(axis=0)
           for p in ("a red fox in a desert", "a red fox in a forest", "a red fox in a forest, digital art")]
    assert np.allclose(fox[0], fox[1]) and np.allclose(fox[1], fox[2])


def test_objects_are_drawn_as_named():
    for prompt, found in [
        ("two small red foxes in a meadow", [("fox", "red", "small")] * 2),
        ("a huge blue house in the desert", [("house", "blue", "huge")]),
        ("three tiny yellow kites and a green tree at night",
         [("kite", "yellow", "tiny")] * 3 + [("tree", "green", None)]),
        ("a cat in a snowy field", [("cat", "black", None)]),  # the cat's default colour
    ]:
        for seed in range(3):
            assert sorted(detect_objects(pixels(prompt, seed))) == sorted(found), (prompt, seed)


STYLE_DIRECTION = {  # the statistic each style moves, and the direction (documented in render.STYLE_EFFECTS)
    "vivid colors": ("saturation", +1), "muted tones": ("saturation", -1),
    "high contrast": ("contrast", +1), "soft light": ("contrast", -1), "hazy": ("contrast", -1),
    "highly detailed": ("detail", +1), "intricate": ("detail", +1), "sharp focus": ("detail", +1),
    "soft focus": ("detail", -1),
    "golden hour": ("warmth", +1), "warm light": ("warmth", +1),
    "cinematic": ("vignette", +1), "bright lighting": ("brightness", +1),
}


@pytest.mark.parametrize("style", sorted(STYLE_EFFECTS))
def test_each_style_moves_its_statistic_in_the_documented_direction(style):
    for k, scene in enumerate(random_scenes(12, seed=11)):
        plain = render_scene(scene, k, 64, 64)
        styled = render_scene(Scene(scene.things, scene.setting, (style,)), k, 64, 64)
        if style not in STYLE_DIRECTION:  # neutral styles do nothing to the pixels
            assert np.array_equal(plain, styled)
            continue
        name, sign = STYLE_DIRECTION[style]
        before = image_statistics(plain.astype(np.float32) / 255)[name]
        after = image_statistics(styled.astype(np.float32) / 255)[name]
        assert sign * (after - before) > 0, (style, scene, before, after)


def test_styles_act_once_and_in_a_fixed_order():
    a = RENDERER.render(["a fox, vivid colors, hazy, cinematic"], [1], 64, 64)[0]
    b = RENDERER.render(["a fox, cinematic, hazy, vivid colors, vivid colors"], [1], 64, 64)[0]
    assert encode_png(a) == encode_png(b)


def test_rendering_is_fast():
    prompts = g.train_prompts(300, seed=2)
    start = time.perf_counter()
    RENDERER.render(prompts, list(range(300)), 64, 64)
    assert 300 / (time.perf_counter() - start) > 200  # measured about 3600 images/s on one core


# ------------------------------------------------------------------------------------------ scorers on hand-made images


GREY = np.full((64, 64, 3), 0.5, dtype=np.float32)
YY, XX = np.mgrid[0:64, 0:64]
TRIANGLE = (YY >= 16) & (YY < 40) & (np.abs(XX - 32) <= (YY - 16) * 0.7)  # a tent, 24 px tall ("large")


def test_alignment_on_hand_made_images():
    forest = GREY.copy()
    forest[:32], forest[32:] = (0.10, 0.30, 0.12), (0.16, 0.38, 0.12)
    tent = GREY.copy()
    tent[TRIANGLE] = (0.9, 0.1, 0.1)
    tent_in_forest = forest.copy()
    tent_in_forest[TRIANGLE] = (0.9, 0.1, 0.1)
    cases = [
        (GREY, "a red fox in a forest", 0.0),
        (forest, "a red fox in a forest", 1 / 3),  # the background, no fox
        (tent, "a red tent", 1.0),
        (tent, "a blue tent", 0.5),  # a tent, not blue
        (tent, "a red house", 0.0),
        (tent, "a large red tent", 1.0),
        (tent, "a tiny red tent", 2 / 3),
        (tent, "two red tents", 2.5 / 3),  # one of two
        (tent_in_forest, "a red tent in a forest", 1.0),
        (tent_in_forest, "a red tent in the desert", 2 / 3),
        (GREY, "xyzzy", 1.0),  # a prompt that names nothing
    ]
    scores = ALIGN.score([image(a) for a, _, _ in cases], [p for _, p, _ in cases])
    assert scores == pytest.approx([s for _, _, s in cases])


def test_preference_on_hand_made_images():
    rng = np.random.default_rng(0)
    base = np.zeros((64, 64, 3), np.float32)
    base[:, :32] = (0.9, 0.2, 0.1)
    base[:, 32:] = (0.1, 0.4, 0.9)
    base[20:44, 20:44] = (0.95, 0.85, 0.2)
    lum = (base @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    washed = 0.5 + 0.5 * ((lum + 0.3 * (base - lum)) - 0.5)  # desaturated, lower contrast
    detailed = base + rng.uniform(-0.08, 0.08, (64, 64, 1)).astype(np.float32)
    for taste, scorer in PREFER.items():
        s = scorer.score([image(base), image(washed), image(detailed), image(GREY)], ["x"] * 4)
        assert s[0] > s[1] + 0.5 and s[1] > s[3], taste
        assert s[2] > s[0], taste  # finer detail
    warm = base * np.array([1.1, 1.0, 0.8], np.float32)
    assert PREFER["aesthetic"].score([image(warm)], ["x"])[0] > PREFER["aesthetic"].score([image(base)], ["x"])[0]
    bright = np.clip(base * 1.15, 0, 1)
    assert PREFER["pick"].score([image(bright)], ["x"])[0] > PREFER["pick"].score([image(base)], ["x"])[0]


def test_scores_are_deterministic_and_preference_ignores_the_prompt():
    ims = RENDERER.render(["a red fox in a meadow, vivid colors", "two cats at night"], [1, 2], 64, 64)
    copies = [Image.open(__import__("io").BytesIO(encode_png(im))) for im in ims]
    prompts = ["a red fox in a meadow", "two cats at night"]
    for scorer in (ALIGN, *PREFER.values()):
        assert scorer.score(ims, prompts) == scorer.score(copies, prompts)
    for scorer in PREFER.values():
        assert scorer.score(ims, prompts) == scorer.score(ims, ["xyzzy", "a blue house in the desert"])
    assert PREFER["aesthetic"].score(ims, prompts) != PREFER["pick"].score(ims, prompts)


# --------------------------------------------------------------------------------------------- scorers on the world


def one_fact_changed(scene: Scene, rng: np.random.Generator) -> Scene:
    """The scene with one fact it names changed: an object's noun, its colour, size or count, or the setting."""
    t = scene.things[0]
    options = ["noun", "setting"] + ["colour"] * bool(t.colour) + ["size"] * bool(t.size) + ["count"] * (t.count > 1)
    what = options[int(rng.integers(len(options)))]
    if what == "setting":
        return Scene(scene.things, str(rng.choice([s for s in g.SETTING_INDEX if s != scene.setting])), ())
    if what == "noun":
        t2 = Thing(str(rng.choice([o for o in g.OBJECT_INDEX if o != t.noun])), t.colour, t.size, t.count)
    elif what == "colour":
        t2 = Thing(t.noun, str(rng.choice([c for c in g.COLOURS if c != t.colour])), t.size, t.count)
    elif what == "size":
        t2 = Thing(t.noun, t.colour, str(rng.choice([s for s in g.SIZES if s != t.size])), t.count)
    else:
        t2 = Thing(t.noun, t.colour, t.size, 1)
    return Scene((t2, *scene.things[1:]), scene.setting, ())


def test_alignment_keeps_styled_renders_and_drops_for_a_changed_fact():
    rng = np.random.default_rng(21)
    scenes = random_scenes(80, seed=21)
    originals, styled, changed = [], [], []
    for scene in scenes:
        originals.append(g.describe(scene, rng))
        styles = tuple(str(s) for s in rng.choice([s.name for s in g.STYLES], size=int(rng.integers(1, 4)),
                                                  replace=False))
        styled.append(g.describe(Scene(scene.things, scene.setting, styles), rng))
        changed.append(g.describe(one_fact_changed(scene, rng), rng))
    seeds = list(range(len(scenes)))
    plain_a = np.array(ALIGN.score(RENDERER.render(originals, seeds, 64, 64), originals))
    styled_a = np.array(ALIGN.score(RENDERER.render(styled, seeds, 64, 64), originals))
    changed_a = np.array(ALIGN.score(RENDERER.render(changed, seeds, 64, 64), originals))
    # measured: plain 0.997, styled 0.997, changed 0.578; styled > changed in 98.75% of the scenes
    assert plain_a.mean() >= 0.98 and styled_a.mean() >= 0.95
    assert changed_a.mean() <= 0.7
    assert np.mean(styled_a > changed_a) >= 0.9


def test_intended_dynamics_over_random_scenes():
    """Good styles raise preference at the same alignment; a lush setting in place of a plain one raises
    preference (comparably or more) but lowers alignment; harmful styles lower preference."""
    rng = np.random.default_rng(5)
    originals, good, harmful, lush = [], [], [], []
    for scene in random_scenes(100, seed=5):
        scene = Scene(scene.things, str(rng.choice(g.PLAIN_SETTINGS)), ())
        originals.append(g.describe(scene, rng))
        k = int(rng.integers(1, 4))
        good.append(", ".join([originals[-1], *rng.choice(g.GOOD_STYLES, size=k, replace=False)]))
        harmful.append(", ".join([originals[-1], *rng.choice(g.HARMFUL_STYLES, size=int(rng.integers(1, 3)),
                                                             replace=False)]))
        lush.append(g.describe(Scene(scene.things, str(rng.choice(g.LUSH_SETTINGS)), ()), rng))
    seeds = list(range(len(originals)))
    images = {name: RENDERER.render(ps, seeds, 64, 64)
              for name, ps in {"original": originals, "good": good, "harmful": harmful, "lush": lush}.items()}
    align = {name: np.array(ALIGN.score(ims, originals)) for name, ims in images.items()}
    assert align["original"].mean() >= 0.98
    assert align["good"].mean() >= align["original"].mean() - 0.02  # measured: 1.000 -> 1.000
    assert align["lush"].mean() <= align["original"].mean() - 0.2  # measured: 1.000 -> 0.683
    for taste, scorer in PREFER.items():
        pref = {name: np.array(scorer.score(ims, originals)) for name, ims in images.items()}
        d_good = pref["good"] - pref["original"]
        d_harm = pref["harmful"] - pref["original"]
        d_lush = pref["lush"] - pref["original"]
        # measured (aesthetic / pick): good +0.52 / +0.38 (up in 95% / 91% of the scenes),
        # harmful -0.69 / -0.56 (down in 100% / 100%), lush +0.59 / +0.63 (up in 73% / 75%)
        assert d_good.mean() > 0.2 and np.mean(d_good > 0) >= 0.8, taste
        assert d_harm.mean() < -0.4 and np.mean(d_harm < 0) >= 0.95, taste
        assert d_lush.mean() > 0.4 and d_lush.mean() >= d_good.mean(), taste
