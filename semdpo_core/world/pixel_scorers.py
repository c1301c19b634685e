"""Scorers of the synthetic world: fixed, documented functions of the pixels, decided once.

AlignmentScorer (the role CLIP score plays) reads the image alone and checks the facts the
prompt (always the ORIGINAL user prompt) names:

1. Colour classes per pixel (HSV, V = max channel, S = (max - min) / max, hue in degrees):
   black if V < 0.27 or (V < 0.34 and S < 0.25); else white if S < 0.22 and V > 0.70; else
   chromatic if S >= 0.30 and V >= 0.25, by hue:
   red [340, 18), orange [18, 42), yellow [42, 75), green [75, 165), blue [165, 255),
   purple [255, 340); anything else belongs to no class (greys, the objects' outlines).
   Hue and saturation classes survive the style transforms (they scale chroma and luminance).
2. Objects: 4-connected components of one colour class with at least 12 pixels that do not touch
   the image border (background regions always do) are candidate objects. Each is described by
   its bounding box's log aspect ratio and the filled share of the 3x3 cells of its box, and takes
   the noun of the nearest silhouette prototype (every object at every size word, drawn at this
   image height); it is kept if that distance is < 0.45 and its size word is the prototype size
   nearest in log height.
3. The setting: the mean colour of the top and bottom border strips (H/16 rows each) as
   (luminance, R - G, (R + G)/2 - B) per strip, classified as the nearest of the world's
   backgrounds (each setting and the plain background, drawn empty under no style and under each
   single style: 9 x 16 prototypes, averaged over 4 seeds).
4. Facts: per Thing, its noun is present; if named, its colour (a detection of that noun in that
   colour), its size (a detection of that noun, in the named colour if any, of that size); if
   count > 1, credit min(found, count) / count for the detections of that noun (and colour). The
   setting, if named, is the classified background. Score = mean credit over the facts, in
   [0, 1]; a prompt that names nothing scores 1.

PreferenceScorer(taste) (the role of ImageReward/HPS = "aesthetic" and PickScore = "pick") never
reads the prompt. From the pixels (float RGB in [0, 1], luminance Y = Rec. 601) it measures:
  saturation  mean chroma (max - min channel)
  contrast    standard deviation of Y
  detail      mean |Y - 3x3 box blur of Y| (fine, high-frequency detail)
  warmth      mean (R - B)
  brightness  mean Y
  colourful   Hasler-Suesstrunk colourfulness: sqrt(sd(rg)^2 + sd(yb)^2) + 0.3 sqrt(mean(rg)^2 + mean(yb)^2),
              rg = R - G, yb = (R + G)/2 - B
  vignette    mean Y of the 2x2 centre cells of a 4x4 grid - mean Y of its four corner cells
each standardised z = (stat - REFERENCE mean) / REFERENCE sd, the reference being unstyled 64x64
renders of 400 train prompts (measured once, frozen below). Score = 2 x sum_k weight_k x g_k(z_k):
g = 2 tanh(z / 2) (more is better, with diminishing returns, within +-2) except the aesthetic taste's
vignette, g = 2 tanh(z / 2) - (z - 2)^2 / 4 beyond z = 2, clipped to [-2, 2] (a moderate vignette is
best; too much is worse). Weights (TASTES):
  aesthetic: saturation .25, contrast .20, detail .20, warmth .10, colourful .15, vignette .10
  pick:      saturation .15, contrast .10, detail .10, brightness .25, colourful .30, vignette -.10
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from semdpo_core.world.grammar import (
    OBJECTS,
    SETTINGS,
    SIZE_HEIGHT,
    STYLES,
    Scene,
    Thing,
    parse,
    train_prompts,
)
from semdpo_core.world.renderer import (
    apply_styles,
    box_blur,
    luminance,
    object_height,
    paint_background,
    render_scene,
    silhouette,
    total_effect,
)

COLOUR_CLASSES: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "white", "black")
HUE_BINS: tuple[tuple[str, float, float], ...] = (
    ("red", 340, 360), ("red", 0, 18), ("orange", 18, 42), ("yellow", 42, 75),
    ("green", 75, 165), ("blue", 165, 255), ("purple", 255, 340),
)
MIN_AREA = 12
SHAPE_LIMIT = 0.45
PLAIN = "plain"


# ---------------------------------------------------------------------------------------------
# pixels -> colour classes -> components


def to_float(image: Image.Image) -> np.ndarray:
    """RGB float32 [h, w, 3] in [0, 1]."""
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def colour_classes(img: np.ndarray) -> np.ndarray:
    """Per pixel: 1 + index in COLOUR_CLASSES, or 0 for no class (rule 1)."""
    mx, mn = img.max(axis=-1), img.min(axis=-1)
    chroma = mx - mn
    sat = np.where(mx > 0, chroma / np.maximum(mx, 1e-6), 0.0)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    safe = np.maximum(chroma, 1e-6)
    hue = np.where(mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4)) * 60.0
    out = np.zeros(img.shape[:2], dtype=np.int16)
    chromatic = (sat >= 0.30) & (mx >= 0.25)
    for name, lo, hi in HUE_BINS:
        out[chromatic & (hue >= lo) & (hue < hi)] = 1 + COLOUR_CLASSES.index(name)
    out[(sat < 0.22) & (mx > 0.70)] = 1 + COLOUR_CLASSES.index("white")
    out[(mx < 0.27) | ((mx < 0.34) & (sat < 0.25))] = 1 + COLOUR_CLASSES.index("black")
    return out


def label_components(classes: np.ndarray) -> np.ndarray:
    """4-connected components of equal nonzero class: a label per pixel (0 = no class)."""
    h, w = classes.shape
    big = h * w + 1
    on = classes > 0
    labels = np.where(on, np.arange(1, h * w + 1).reshape(h, w), big)
    same_down = on[1:] & (classes[1:] == classes[:-1])
    same_right = on[:, 1:] & (classes[:, 1:] == classes[:, :-1])
    while True:
        new = labels.copy()
        np.minimum(new[1:], np.where(same_down, labels[:-1], big), out=new[1:])
        np.minimum(new[:-1], np.where(same_down, labels[1:], big), out=new[:-1])
        np.minimum(new[:, 1:], np.where(same_right, labels[:, :-1], big), out=new[:, 1:])
        np.minimum(new[:, :-1], np.where(same_right, labels[:, 1:], big), out=new[:, :-1])
        flat = new.ravel()
        for _ in range(4):  # pointer jumping: follow each label to its own label
            flat = np.where(flat < big, flat[np.minimum(flat, h * w) - 1], big)
        new = flat.reshape(h, w)
        if np.array_equal(new, labels):
            return np.where(on, labels, 0)
        labels = new


def shape_descriptor(mask: np.ndarray) -> np.ndarray:
    """[log(width / height), 9 filled shares of the 3x3 cells] of a mask's bounding box."""
    ys, xs = np.nonzero(mask)
    box = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = box.shape
    rows = [0, round(h / 3), round(2 * h / 3), h]
    cols = [0, round(w / 3), round(2 * w / 3), w]
    cells = [box[rows[i] : rows[i + 1], cols[j] : cols[j + 1]] for i in range(3) for j in range(3)]
    return np.array([np.log(w / h)] + [c.mean() if c.size else 0.0 for c in cells], dtype=np.float64)


def grow(mask: np.ndarray, step: int) -> np.ndarray:
    """The mask dilated (step = 1, in a box one pixel wider on each side) or eroded (step = -1)
    by one pixel, 4-neighbour."""
    p = np.pad(mask, 1)
    up, down, left, right = (np.zeros_like(p) for _ in range(4))
    up[:-1], down[1:], left[:, :-1], right[:, 1:] = p[1:], p[:-1], p[:, 1:], p[:, :-1]
    if step > 0:
        return p | up | down | left | right
    return (p & up & down & left & right)[1:-1, 1:-1]


@lru_cache(maxsize=16)
def prototypes(height: int) -> tuple[list[tuple[str, str | None, int]], np.ndarray]:
    """(noun, size word, pixel height) and shape descriptor of every object at every size, for this
    image height, as drawn and with its rim lost (eroded) or merged with its outline (dilated)."""
    keys, rows = [], []
    for o in OBJECTS:
        for size in SIZE_HEIGHT:
            drawn = silhouette(o.noun, object_height(size, height))
            for mask in (drawn, grow(drawn, -1), grow(drawn, 1)):
                ys = np.nonzero(mask.any(axis=1))[0]
                if mask.sum() < MIN_AREA:
                    continue
                keys.append((o.noun, size, int(ys.max() - ys.min() + 1)))
                rows.append(shape_descriptor(mask))
    return keys, np.stack(rows)


def detect_objects(img: np.ndarray) -> list[tuple[str, str, str | None]]:
    """(noun, colour, size word) of every object found in the image (rule 2)."""
    h, w = img.shape[:2]
    classes = colour_classes(img)
    labels = label_components(classes)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    counts = np.bincount(labels.ravel())
    keys, protos = prototypes(h)
    found = []
    for lab in np.nonzero(counts >= MIN_AREA)[0]:
        if lab == 0 or lab in border:
            continue
        mask = labels == lab
        ys = np.nonzero(mask.any(axis=1))[0]
        dist = np.linalg.norm(protos - shape_descriptor(mask), axis=1)
        best = int(np.argmin(dist))
        if dist[best] >= SHAPE_LIMIT:
            continue
        noun = keys[best][0]
        height = ys.max() - ys.min() + 1
        size = min((k for k in keys if k[0] == noun), key=lambda k: abs(np.log(height / k[2])))[1]
        colour = COLOUR_CLASSES[int(classes[mask][0]) - 1]
        found.append((noun, colour, size))
    return found


# ---------------------------------------------------------------------------------------------
# the setting


def border_features(img: np.ndarray) -> np.ndarray:
    """(luminance, R - G, (R + G)/2 - B) of the top and of the bottom border strips (rule 3)."""
    k = max(2, img.shape[0] // 16)
    out = []
    for strip in (img[:k], img[-k:]):
        r, g, b = strip.reshape(-1, 3).mean(axis=0)
        out += [float(luminance(np.array([r, g, b], np.float32))), r - g, (r + g) / 2 - b]
    return np.array(out, dtype=np.float64)


@lru_cache(maxsize=16)
def setting_prototypes(height: int, width: int) -> tuple[list[str], np.ndarray]:
    """Border features of every background (settings and plain), empty, under no style and each single style."""
    names, rows = [], []
    for setting in [None, *(s.name for s in SETTINGS)]:
        for styles in [(), *((s.name,) for s in STYLES)]:
            feats = []
            for seed in range(4):
                bg_rng, _, detail_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
                img = paint_background(setting, height, width, bg_rng)
                if styles:
                    img = apply_styles(img, total_effect(styles), detail_rng)
                feats.append(border_features(np.clip(img, 0, 1)))
            names.append(setting or PLAIN)
            rows.append(np.mean(feats, axis=0))
    return names, np.stack(rows)


def classify_setting(img: np.ndarray) -> str:
    """The setting whose background the image's border strips look most like, or "plain"."""
    names, protos = setting_prototypes(img.shape[0], img.shape[1])
    return names[int(np.argmin(np.linalg.norm(protos - border_features(img), axis=1)))]


# ---------------------------------------------------------------------------------------------
# alignment


def thing_credits(thing: Thing, found: list[tuple[str, str, str | None]]) -> list[float]:
    """Credits of the facts one Thing names (rule 4)."""
    same = [f for f in found if f[0] == thing.noun]
    coloured = [f for f in same if f[1] == thing.colour] if thing.colour else same
    credits = [float(bool(same))]
    if thing.colour:
        credits.append(float(bool(coloured)))
    if thing.size:
        credits.append(float(any(f[2] == thing.size for f in coloured)))
    if thing.count > 1:
        credits.append(min(len(coloured), thing.count) / thing.count)
    return credits


def alignment(img: np.ndarray, scene: Scene) -> float:
    """Mean credit over the facts the scene names, in [0, 1]."""
    credits: list[float] = []
    if scene.things:
        found = detect_objects(img)
        for thing in scene.things:
            credits += thing_credits(thing, found)
    if scene.setting:
        credits.append(float(classify_setting(img) == scene.setting))
    return float(np.mean(credits)) if credits else 1.0


class AlignmentScorer:
    """How much of what the (original) prompt names the image shows: a fraction of facts in [0, 1]."""

    device = torch.device("cpu")

    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        """One alignment score per (image, prompt)."""
        return [alignment(to_float(im), parse(p)) for im, p in zip(images, prompts, strict=True)]


# ---------------------------------------------------------------------------------------------
# preference


STATS: tuple[str, ...] = ("saturation", "contrast", "detail", "warmth", "brightness", "colourful", "vignette")

# Mean and standard deviation of each statistic over unstyled 64x64 renders of
# train_prompts(400, seed=0), seeds 0..399 (reference_statistics(); measured once, frozen).
REFERENCE: dict[str, tuple[float, float]] = {
    "saturation": (0.211, 0.147),
    "contrast": (0.137, 0.0604),
    "detail": (0.0161, 0.0108),
    "warmth": (-0.0652, 0.149),
    "brightness": (0.524, 0.213),
    "colourful": (0.226, 0.115),
    "vignette": (0.00714, 0.0718),
}

TASTES: dict[str, dict[str, float]] = {
    "aesthetic": {"saturation": 0.25, "contrast": 0.20, "detail": 0.20, "warmth": 0.10, "colourful": 0.15,
                  "vignette": 0.10},
    "pick": {"saturation": 0.15, "contrast": 0.10, "detail": 0.10, "brightness": 0.25, "colourful": 0.30,
             "vignette": -0.10},
}


def image_statistics(img: np.ndarray) -> dict[str, float]:
    """The seven statistics the preference scorers read (see the module docstring)."""
    y = luminance(img)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    rg, yb = r - g, (r + g) / 2 - b
    h, w = y.shape
    qh, qw = max(1, h // 4), max(1, w // 4)
    corners = np.mean([y[:qh, :qw].mean(), y[:qh, -qw:].mean(), y[-qh:, :qw].mean(), y[-qh:, -qw:].mean()])
    centre = y[qh : h - qh, qw : w - qw].mean()
    return {
        "saturation": float((img.max(axis=-1) - img.min(axis=-1)).mean()),
        "contrast": float(y.std()),
        "detail": float(np.abs(y - box_blur(y)).mean()),
        "warmth": float((r - b).mean()),
        "brightness": float(y.mean()),
        "colourful": float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())),
        "vignette": float(centre - corners),
    }


def _more_is_better(z: float) -> float:
    """2 tanh(z / 2): about z near the reference, bounded by +-2."""
    return float(2.0 * np.tanh(z / 2.0))


def _moderate(z: float) -> float:
    """2 tanh(z / 2) - (z - 2)^2 / 4 beyond z = 2, within [-2, 2]: more is better up to z = 2, then too much."""
    return float(np.clip(2.0 * np.tanh(z / 2.0) - max(0.0, z - 2.0) ** 2 / 4.0, -2.0, 2.0))


def preference(img: np.ndarray, taste: str) -> float:
    """2 x sum over the taste's statistics of weight x g(z)."""
    stats = image_statistics(img)
    total = 0.0
    for name, weight in TASTES[taste].items():
        mean, sd = REFERENCE[name]
        z = (stats[name] - mean) / sd
        g = _moderate(z) if (taste == "aesthetic" and name == "vignette") else _more_is_better(z)
        total += weight * g
    return 2.0 * total


class PreferenceScorer:
    """A fixed taste over image statistics; the prompt is never read (it is in the interface only)."""

    device = torch.device("cpu")

    def __init__(self, taste: str = "aesthetic"):
        if taste not in TASTES:
            raise ValueError(f"unknown taste {taste!r}; choose one of {sorted(TASTES)}")
        self.taste = taste

    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        """One preference score per image."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        return [preference(to_float(im), self.taste) for im in images]


def reference_statistics(n: int = 400, size: int = 64) -> dict[str, tuple[float, float]]:
    """Mean and sd of each statistic over unstyled renders of train prompts: how REFERENCE was measured."""
    prompts = train_prompts(n, seed=0)
    rows = []
    for k, p in enumerate(prompts):
        scene = parse(p)
        plain = Scene(scene.things, scene.setting, ())
        rows.append(image_statistics(render_scene(plain, k, size, size).astype(np.float32) / 255.0))
    return {s: (float(np.mean([r[s] for r in rows])), float(np.std([r[s] for r in rows]))) for s in STATS}
