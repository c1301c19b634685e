"""The scene grammar of the synthetic text-to-image world: what a prompt can name, how it is read.

A prompt names a Scene: some Things (an object noun with an optional colour, an optional size and
a count), at most one setting (the background), and style words (how the picture is treated).
Every rule below is fixed; it is the known answer the pipeline's learning is checked against.

Words (canonical name first, then its synonyms; every synonym means exactly its canonical word):
- OBJECTS: 14 nouns, each with a plural, a silhouette (drawn by render.py; `aspect` = its width
  over its height) and a default colour used when the prompt names none.
- COLOURS: 8 colour words; "violet" = "purple".
- SIZES: tiny, small (= little), large (= big), huge (= giant); each sets the object's height as a
  fraction of the image height (SIZE_HEIGHT; no size word = "medium", 0.26).
- COUNTS: a / an / one = 1, two = 2, three = 3.
- SETTINGS: 8 backgrounds, each with its own painting in render.py; `lush` marks the ones meant to
  be the more attractive (forest, ocean, meadow, mountain lake). The scorers judge pixels only, so
  whether they like a lush setting more is measured (tests/test_world.py), never assumed.
- STYLES: 15 phrases, each with a documented effect on image statistics (render.STYLE_EFFECTS);
  `effect` says whether the preference scorers are expected to like it ("good"), dislike it
  ("harmful") or not see it ("neutral", no effect on the pixels).

Reading rules of `parse` (case and punctuation are ignored; text is split into words):
1. The longest known phrase starting at a word wins ("snowy field" before "field"; "vivid colors").
2. Words that are not known change nothing: they are skipped.
3. A count, size or colour word waits for the next object noun and attaches to it; a later word
   of the same kind replaces a waiting one ("a red blue fox" is a blue fox); words still waiting
   when the prompt ends are dropped. No count word means count 1 (a plural alone is still 1).
4. Each object noun makes one Thing, in the order named ("a fox and a fox" is two Things).
5. The LAST setting named wins: a picture has one background, so appending "in a forest" to a
   desert prompt changes what is drawn (the semantic drift Sem-DPO is meant to hold back).
6. Styles are kept in the order first named; a style named twice acts once.

Held-out combinations (the test rule): with objects and settings numbered in the order listed in
OBJECTS and SETTINGS, the pair (object i, setting j) is RESERVED FOR TEST when (i - j) % 4 == 0.
Every train prompt (and every SFT original) only pairs its objects with non-reserved settings
(or has no setting); every test prompt has a setting and only reserved pairs. So no test prompt's
(object, setting) combination occurs in any train prompt, while every object and every setting
occurs in both.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class ObjectKind:
    """An object noun: its plural, synonyms (singular, plural), silhouette aspect and default colour."""

    noun: str
    plural: str
    aspect: float
    colour: str
    synonyms: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class SettingKind:
    """A setting: its canonical name, its surface phrases (with prepositions) and whether it is lush."""

    name: str
    phrases: tuple[str, ...]
    synonyms: tuple[str, ...]
    lush: bool


@dataclass(frozen=True)
class StyleKind:
    """A style phrase, its synonyms, and whether the preference scorers like it."""

    name: str
    effect: str  # "good", "harmful" or "neutral"
    synonyms: tuple[str, ...] = ()


@dataclass(frozen=True)
class Thing:
    """One named object: canonical noun, colour (None = default), size (None = medium), count."""

    noun: str
    colour: str | None = None
    size: str | None = None
    count: int = 1


@dataclass(frozen=True)
class Scene:
    """What a prompt names: things, the setting (None = plain background) and the styles."""

    things: tuple[Thing, ...] = ()
    setting: str | None = None
    styles: tuple[str, ...] = field(default=())


OBJECTS: tuple[ObjectKind, ...] = (
    ObjectKind("fox", "foxes", 1.6, "orange"),
    ObjectKind("cat", "cats", 0.8, "black", (("kitty", "kitties"),)),
    ObjectKind("horse", "horses", 1.3, "white", (("pony", "ponies"),)),
    ObjectKind("bird", "birds", 1.5, "blue"),
    ObjectKind("house", "houses", 1.0, "red", (("cottage", "cottages"),)),
    ObjectKind("tree", "trees", 0.7, "green"),
    ObjectKind("boat", "boats", 1.4, "white", (("sailboat", "sailboats"),)),
    ObjectKind("car", "cars", 1.9, "red", (("automobile", "automobiles"),)),
    ObjectKind("balloon", "balloons", 0.75, "red"),
    ObjectKind("lighthouse", "lighthouses", 0.4, "white"),
    ObjectKind("tent", "tents", 1.4, "orange"),
    ObjectKind("kite", "kites", 0.7, "yellow"),
    ObjectKind("umbrella", "umbrellas", 1.2, "purple", (("parasol", "parasols"),)),
    ObjectKind("fish", "fish", 1.8, "yellow"),
)

COLOURS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "white", "black")
COLOUR_SYNONYMS: dict[str, str] = {"violet": "purple"}

SIZES: tuple[str, ...] = ("tiny", "small", "large", "huge")
SIZE_SYNONYMS: dict[str, str] = {"little": "small", "big": "large", "giant": "huge"}
SIZE_HEIGHT: dict[str | None, float] = {"tiny": 0.13, "small": 0.18, None: 0.26, "large": 0.35, "huge": 0.45}

COUNT_WORDS: dict[str, int] = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3}
COUNT_NAMES: dict[int, str] = {1: "one", 2: "two", 3: "three"}

SETTINGS: tuple[SettingKind, ...] = (
    SettingKind("desert", ("in the desert", "in a desert", "on the sand dunes"), ("sand dunes",), False),
    SettingKind("snowy field", ("in a snowy field", "on a snowfield", "in the snow"), ("snowfield", "snow"), False),
    SettingKind("forest", ("in a forest", "in the forest", "in the woods"), ("woods",), True),
    SettingKind("ocean", ("on the ocean", "at sea", "over the sea"), ("sea",), True),
    SettingKind("city", ("in the city", "in a city", "over the town"), ("town",), False),
    SettingKind("night sky", ("under a night sky", "under the starry sky", "at night"), ("starry sky", "night"), False),
    SettingKind("meadow", ("in a meadow", "on a meadow", "in a grassland"), ("grassland",), True),
    SettingKind("mountain lake", ("by a mountain lake", "near a mountain lake", "at an alpine lake"),
                ("alpine lake", "lake"), True),
)

STYLES: tuple[StyleKind, ...] = (
    StyleKind("vivid colors", "good", ("vibrant colors",)),
    StyleKind("high contrast", "good"),
    StyleKind("highly detailed", "good", ("hyper detailed",)),
    StyleKind("intricate", "good"),
    StyleKind("sharp focus", "good"),
    StyleKind("golden hour", "good"),
    StyleKind("warm light", "good", ("warm lighting",)),
    StyleKind("cinematic", "good"),
    StyleKind("bright lighting", "good"),
    StyleKind("muted tones", "harmful", ("muted colors",)),
    StyleKind("soft light", "harmful", ("soft lighting",)),
    StyleKind("hazy", "harmful"),
    StyleKind("soft focus", "harmful"),
    StyleKind("digital art", "neutral"),
    StyleKind("trending on artstation", "neutral"),
)

GOOD_STYLES: tuple[str, ...] = tuple(s.name for s in STYLES if s.effect == "good")
HARMFUL_STYLES: tuple[str, ...] = tuple(s.name for s in STYLES if s.effect == "harmful")
NEUTRAL_STYLES: tuple[str, ...] = tuple(s.name for s in STYLES if s.effect == "neutral")
LUSH_SETTINGS: tuple[str, ...] = tuple(s.name for s in SETTINGS if s.lush)
PLAIN_SETTINGS: tuple[str, ...] = tuple(s.name for s in SETTINGS if not s.lush)

JOINERS: tuple[str, ...] = ("and", "with", "next to", "near", "beside")
REWRITE_TEMPLATE_WORDS: tuple[str, ...] = ("Rewrite", ":")
HELD_OUT_MODULUS = 4

OBJECT_INDEX: dict[str, int] = {o.noun: i for i, o in enumerate(OBJECTS)}
SETTING_INDEX: dict[str, int] = {s.name: j for j, s in enumerate(SETTINGS)}
OBJECT_BY_NOUN: dict[str, ObjectKind] = {o.noun: o for o in OBJECTS}


def _lexicon() -> dict[tuple[str, ...], tuple[str, object]]:
    """Every known phrase (as a word tuple) -> (kind, canonical value)."""
    lex: dict[tuple[str, ...], tuple[str, object]] = {}
    for o in OBJECTS:
        for singular, plural in ((o.noun, o.plural), *o.synonyms):
            lex[(singular,)] = ("object", o.noun)
            lex[(plural,)] = ("object", o.noun)
    for c in COLOURS:
        lex[(c,)] = ("colour", c)
    for word, c in COLOUR_SYNONYMS.items():
        lex[(word,)] = ("colour", c)
    for s in SIZES:
        lex[(s,)] = ("size", s)
    for word, s in SIZE_SYNONYMS.items():
        lex[(word,)] = ("size", s)
    for word, n in COUNT_WORDS.items():
        lex[(word,)] = ("count", n)
    for s in SETTINGS:
        for name in (s.name, *s.synonyms):
            lex[tuple(name.split())] = ("setting", s.name)
    for st in STYLES:
        for name in (st.name, *st.synonyms):
            lex[tuple(name.split())] = ("style", st.name)
    return lex


LEXICON = _lexicon()
_MAX_PHRASE = max(len(k) for k in LEXICON)


def words(prompt: str) -> list[str]:
    """Lower-case words of a prompt, punctuation removed: what `parse` reads."""
    return re.sub(r"[^\w\s]", " ", prompt.lower()).split()


@lru_cache(maxsize=65536)
def parse(prompt: str) -> Scene:
    """The Scene a prompt names, by the reading rules in the module docstring."""
    tokens = words(prompt)
    things: list[Thing] = []
    setting: str | None = None
    styles: list[str] = []
    pending: dict[str, object] = {}
    i = 0
    while i < len(tokens):
        for n in range(min(_MAX_PHRASE, len(tokens) - i), 0, -1):
            hit = LEXICON.get(tuple(tokens[i : i + n]))
            if hit is not None:
                break
        else:
            i += 1
            continue
        kind, value = hit
        if kind == "object":
            things.append(Thing(str(value), pending.get("colour"), pending.get("size"), int(pending.get("count", 1))))
            pending = {}
        elif kind == "setting":
            setting = str(value)
        elif kind == "style":
            if value not in styles:
                styles.append(str(value))
        else:
            pending[kind] = value
        i += n
    return Scene(tuple(things), setting, tuple(styles))


def content_words(prompt: str) -> frozenset[str]:
    """The content concepts a prompt names, canonical: each noun ("fox"), its count, colour and size
    bound to it ("one fox", "red fox", "small fox"), and the setting ("snowy field"). Styles are not
    content. A rewrite keeps the original's content when content_words(original) <= content_words(rewrite)."""
    scene = parse(prompt)
    out: set[str] = set()
    for t in scene.things:
        out.add(t.noun)
        out.add(f"{COUNT_NAMES.get(t.count, str(t.count))} {t.noun}")
        if t.colour:
            out.add(f"{t.colour} {t.noun}")
        if t.size:
            out.add(f"{t.size} {t.noun}")
    if scene.setting:
        out.add(scene.setting)
    return frozenset(out)


def is_reserved(noun: str, setting: str) -> bool:
    """Whether the (object, setting) pair is held out for test: (i - j) % 4 == 0."""
    return (OBJECT_INDEX[noun] - SETTING_INDEX[setting]) % HELD_OUT_MODULUS == 0


def scene_pairs(scene: Scene) -> set[tuple[str, str]]:
    """The (object, setting) combinations a scene shows."""
    return {(t.noun, scene.setting) for t in scene.things} if scene.setting else set()


def scene_width(scene: Scene) -> float:
    """Total width of the scene's objects as a fraction of a square image's width (layout capacity)."""
    return sum(t.count * (SIZE_HEIGHT[t.size] * OBJECT_BY_NOUN[t.noun].aspect + 0.06) for t in scene.things)


def _choice(rng: np.random.Generator, options: tuple | list) -> object:
    """One option, uniformly."""
    return options[int(rng.integers(len(options)))]


def _article(word: str) -> str:
    """'a' or 'an' before a word."""
    return "an" if word[0] in "aeiou" else "a"


def describe_thing(thing: Thing, rng: np.random.Generator, synonyms: float = 0.0) -> str:
    """A noun phrase for a Thing: count or article, size, colour, noun (plural for counts > 1)."""
    kind = OBJECT_BY_NOUN[thing.noun]
    singular, plural = kind.noun, kind.plural
    if kind.synonyms and rng.random() < synonyms:
        singular, plural = _choice(rng, kind.synonyms)
    words_: list[str] = []
    if thing.size:
        alts = [thing.size] + [w for w, s in SIZE_SYNONYMS.items() if s == thing.size]
        words_.append(str(_choice(rng, alts)) if rng.random() < synonyms else thing.size)
    if thing.colour:
        alts = [thing.colour] + [w for w, c in COLOUR_SYNONYMS.items() if c == thing.colour]
        words_.append(str(_choice(rng, alts)) if rng.random() < synonyms else thing.colour)
    words_.append(singular if thing.count == 1 else plural)
    head = _article(words_[0]) if thing.count == 1 else COUNT_NAMES[thing.count]
    return " ".join([head, *words_])


def describe(scene: Scene, rng: np.random.Generator, synonyms: float = 0.3, reorder: float = 0.15) -> str:
    """A natural prompt for a scene: things joined by 'and'/'with'/'near'..., a setting phrase (in,
    on, at, by, under, over...), then the styles after commas. With probability `reorder` the
    setting phrase comes first ("at night, two small boats"); `synonyms` is the chance per word of
    a synonym."""
    parts = [describe_thing(scene.things[0], rng, synonyms)] if scene.things else []
    for t in scene.things[1:]:
        parts.append(f"{_choice(rng, JOINERS)} {describe_thing(t, rng, synonyms)}")
    body = " ".join(parts)
    if scene.setting:
        kind = SETTINGS[SETTING_INDEX[scene.setting]]
        phrase = str(_choice(rng, kind.phrases))
        body = f"{phrase}, {body}" if body and rng.random() < reorder else f"{body} {phrase}".strip()
    return ", ".join([body, *scene.styles]) if body else ", ".join(scene.styles)


def random_thing(rng: np.random.Generator, nouns: list[str] | tuple[str, ...], plain: bool = False) -> Thing:
    """A random Thing over the given nouns: colour named 70%, size 40%, count 2 or 3 in 25% (unless plain)."""
    noun = str(_choice(rng, nouns))
    colour = str(_choice(rng, COLOURS)) if rng.random() < 0.7 else None
    if plain:
        return Thing(noun, colour)
    size = str(_choice(rng, SIZES)) if rng.random() < 0.4 else None
    count = int(_choice(rng, (2, 2, 3))) if rng.random() < 0.25 else 1
    return Thing(noun, colour, size, count)


def _nouns_for(setting: str | None, reserved: bool) -> list[str]:
    """Nouns allowed with a setting: the reserved pairs (test) or the others (train)."""
    if setting is None:
        return [o.noun for o in OBJECTS]
    return [o.noun for o in OBJECTS if is_reserved(o.noun, setting) == reserved]


def random_scene(rng: np.random.Generator, *, held_out: bool, kind: str = "train") -> Scene:
    """A random scene that fits in the picture; held_out selects reserved (test) pairs.

    kind: "train" (mixed), "captions" (one plain object, setting), "scenes" (1-2 objects with counts
    and sizes, setting), "styled" (like train, with a setting, plus 1-3 style words)."""
    for _ in range(1000):
        if kind == "train":
            setting = str(_choice(rng, [s.name for s in SETTINGS])) if rng.random() < 0.85 else None
        else:
            setting = str(_choice(rng, [s.name for s in SETTINGS]))
        nouns = _nouns_for(setting, held_out)
        n_things = 1 if kind == "captions" or rng.random() < 0.65 else 2
        things = tuple(random_thing(rng, nouns, plain=kind == "captions") for _ in range(n_things))
        if kind == "scenes" and all(t.size is None and t.count == 1 for t in things):
            continue
        styles: tuple[str, ...] = ()
        if kind == "styled" or (kind == "train" and rng.random() < 0.25):
            k = int(rng.integers(1, 4 if kind == "styled" else 3))
            styles = tuple(str(s) for s in rng.choice([s.name for s in STYLES], size=k, replace=False))
        scene = Scene(things, setting, styles)
        if scene_width(scene) <= 0.75:
            return scene
    raise RuntimeError("no scene fits")  # unreachable in practice: single medium objects always fit


def _distinct(n: int, make: Callable[[], str]) -> list[str]:
    """n distinct strings from a generator function, in first-made order."""
    seen: dict[str, None] = {}
    for _ in range(n * 200):
        if len(seen) == n:
            break
        seen.setdefault(make(), None)
    if len(seen) < n:
        raise ValueError(f"could not make {n} distinct prompts")
    return list(seen)


def train_prompts(n: int, seed: int) -> list[str]:
    """n distinct train prompts (no held-out combination), deterministic given seed."""
    rng = np.random.default_rng([seed, 1])
    return _distinct(n, lambda: describe(random_scene(rng, held_out=False), rng))


TEST_SETS: tuple[str, ...] = ("captions", "scenes", "styled")


def test_sets(n_per_set: int, seed: int) -> dict[str, list[str]]:
    """Held-out test prompts in three sets of different character (the paper's COCO, DiffusionDB
    and Lexica): "captions" = one plain object in a setting; "scenes" = one or two objects with
    counts and sizes; "styled" = prompts already carrying 1-3 style words. Every (object, setting)
    pair in them is reserved, so none occurs in train. Deterministic given seed."""
    out = {}
    for k, name in enumerate(TEST_SETS):
        rng = np.random.default_rng([seed, 2, k])
        out[name] = _distinct(n_per_set,
                              lambda rng=rng, name=name: describe(random_scene(rng, held_out=True, kind=name), rng))
    return out


SFT_REWORD_SHARE = 0.12


def _style_suffix(rng: np.random.Generator, present: tuple[str, ...]) -> list[str]:
    """1-4 style phrases not already present: each good with probability 0.7, else harmful or neutral."""
    k = int(rng.integers(1, 5))
    chosen: list[str] = []
    for _ in range(50):
        if len(chosen) == k:
            break
        pool = GOOD_STYLES if rng.random() < 0.7 else HARMFUL_STYLES + NEUTRAL_STYLES
        style = str(_choice(rng, pool))
        if style not in chosen and style not in present:
            kind = next(s for s in STYLES if s.name == style)
            chosen.append(str(_choice(rng, (style, *kind.synonyms))) if rng.random() < 0.2 else style)
    return chosen


def sft_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """(original, rewrite) pairs for supervised fine-tuning: the rewrite is the original (or, in
    about 12%, the same scene reworded with synonyms / the setting moved first) followed by 1-4 style
    phrases after commas, mostly good ones and some harmful or neutral. Originals come from the train
    distribution; every content concept of the original stays in the rewrite."""
    rng = np.random.default_rng([seed, 3])
    pairs = []
    for _ in range(n):
        scene = random_scene(rng, held_out=False)
        original = describe(scene, rng)
        base = original
        if rng.random() < SFT_REWORD_SHARE:
            base = describe(parse(original), rng, synonyms=0.8, reorder=0.5)
        pairs.append((original, ", ".join([base, *_style_suffix(rng, parse(original).styles)])))
    return pairs


def _vocabulary() -> tuple[str, ...]:
    """Every word or punctuation token a generated prompt, a rewrite, or the rewriter's template can contain."""
    vocab: set[str] = {",", *REWRITE_TEMPLATE_WORDS}
    phrases: list[str] = [*COUNT_WORDS, *COLOURS, *COLOUR_SYNONYMS, *SIZES, *SIZE_SYNONYMS, *JOINERS]
    for o in OBJECTS:
        phrases += [o.noun, o.plural] + [w for pair in o.synonyms for w in pair]
    for s in SETTINGS:
        phrases += [s.name, *s.phrases, *s.synonyms]
    for st in STYLES:
        phrases += [st.name, *st.synonyms]
    for p in phrases:
        vocab.update(p.split())
    return tuple(sorted(vocab))


VOCABULARY: tuple[str, ...] = _vocabulary()
