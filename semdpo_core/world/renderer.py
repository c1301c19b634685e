"""The procedural renderer of the synthetic world: a prompt and a seed -> an RGB image.

The prompt is first parsed (grammar.parse) and only the Scene is drawn, so words the grammar does
not know change nothing, byte for byte. Fixed rules:

- Background: the setting paints the whole image (BACKGROUNDS below: a sky gradient above a
  horizon and the ground below, plus the setting's texture: dunes, snow shading, tree trunks,
  waves, buildings with lit windows, stars, flowers, mountains). No setting: plain grey 0.6.
  Every large background region touches the image border.
- Objects: each Thing draws `count` copies of its object's silhouette (SILHOUETTES, in a box of
  width = aspect x height), filled with its colour (COLOUR_RGB; the object's default colour when
  the prompt names none), height = SIZE_HEIGHT[size] x image height, each surrounded by a mid-grey
  outline (OUTLINE_RGB, 1 pixel per 40 image rows) that separates it from any background. Objects
  never overlap (boxes at least two outline widths apart) and keep a margin of the outline width
  + 2 from the border; each goes to a uniformly random free position, and if one has none, all are
  shrunk by 0.85 and placed again. Positions are integer pixels, so a silhouette of a given height
  is always the same set of pixels.
- Styles (STYLE_EFFECTS): each named style adds its parameters once; the sum is applied in a fixed
  order whatever the word order: soft focus (blend with a 3x3 box blur), sharpen (unsharp mask),
  fine detail (uniform luminance noise of the summed amplitude), saturation (scale chroma about
  each pixel's luminance), contrast (scale about mid-grey 0.5, so the outline's grey never moves),
  warmth (R x (1 + w), B x (1 - w)), brightness (x exp(b)), haze (blend with light grey), vignette
  (x (1 - v r^2), r^2 = 1 at the corners, 0.5 at the edge midpoints), clip to [0, 1], round to 8 bits.
- Randomness: np.random.SeedSequence(seed) spawns three independent streams: background texture,
  layout, detail noise. So the same prompt and seed give identical pixels in any batch; the seed
  moves positions and textures; changing the setting or the styles keeps the objects' positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from semdpo_core.world.grammar import OBJECT_BY_NOUN, SIZE_HEIGHT, Scene, parse

RGB = tuple[float, float, float]

COLOUR_RGB: dict[str, RGB] = {
    "red": (0.86, 0.12, 0.10),
    "orange": (0.96, 0.52, 0.08),
    "yellow": (0.96, 0.86, 0.12),
    "green": (0.16, 0.72, 0.20),
    "blue": (0.14, 0.32, 0.88),
    "purple": (0.58, 0.20, 0.80),
    "white": (0.97, 0.97, 0.97),
    "black": (0.05, 0.05, 0.06),
}
OUTLINE_RGB: RGB = (0.5, 0.5, 0.5)
PLAIN_RGB: RGB = (0.6, 0.6, 0.6)

# Silhouettes in the unit box (u = x / width, v = y / height, v down). Parts:
# ("ellipse", cu, cv, ru, rv), ("rect", u0, v0, u1, v1), ("poly", ((u, v), ...)) convex,
# ("upper_ellipse", cu, cv, ru, rv) = the half of the ellipse above its centre.
SILHOUETTES: dict[str, tuple[tuple, ...]] = {
    "fox": (("ellipse", 0.45, 0.62, 0.32, 0.24), ("ellipse", 0.80, 0.40, 0.13, 0.20),
            ("poly", ((0.70, 0.28), (0.73, 0.0), (0.80, 0.24))), ("poly", ((0.82, 0.24), (0.89, 0.0), (0.92, 0.30))),
            ("ellipse", 0.12, 0.50, 0.13, 0.15), ("rect", 0.24, 0.70, 0.31, 1.0), ("rect", 0.58, 0.70, 0.65, 1.0)),
    "cat": (("ellipse", 0.50, 0.70, 0.42, 0.30), ("ellipse", 0.50, 0.32, 0.30, 0.20),
            ("poly", ((0.22, 0.30), (0.26, 0.0), (0.44, 0.16))), ("poly", ((0.56, 0.16), (0.74, 0.0), (0.78, 0.30)))),
    "horse": (("ellipse", 0.45, 0.42, 0.32, 0.16), ("poly", ((0.64, 0.40), (0.76, 0.06), (0.90, 0.10), (0.80, 0.44))),
              ("ellipse", 0.88, 0.13, 0.12, 0.11), ("rect", 0.17, 0.45, 0.25, 1.0), ("rect", 0.33, 0.45, 0.41, 1.0),
              ("rect", 0.53, 0.45, 0.61, 1.0), ("rect", 0.67, 0.45, 0.75, 1.0)),
    "bird": (("ellipse", 0.50, 0.66, 0.30, 0.24), ("poly", ((0.38, 0.62), (0.0, 0.04), (0.14, 0.0), (0.52, 0.50))),
             ("poly", ((0.48, 0.50), (0.86, 0.0), (1.0, 0.04), (0.62, 0.62))),
             ("poly", ((0.76, 0.56), (1.0, 0.66), (0.76, 0.78)))),
    "house": (("rect", 0.10, 0.46, 0.90, 1.0), ("poly", ((0.0, 0.50), (0.5, 0.0), (1.0, 0.50)))),
    "tree": (("poly", ((0.0, 0.80), (0.5, 0.0), (1.0, 0.80))), ("rect", 0.38, 0.76, 0.62, 1.0)),
    "boat": (("poly", ((0.0, 0.70), (1.0, 0.70), (0.82, 1.0), (0.18, 1.0))),
             ("poly", ((0.47, 0.0), (0.47, 0.66), (0.08, 0.66))), ("rect", 0.47, 0.0, 0.55, 0.72)),
    "car": (("rect", 0.0, 0.42, 1.0, 0.80), ("poly", ((0.18, 0.44), (0.32, 0.06), (0.68, 0.06), (0.82, 0.44))),
            ("ellipse", 0.24, 0.80, 0.10, 0.20), ("ellipse", 0.76, 0.80, 0.10, 0.20)),
    "balloon": (("ellipse", 0.50, 0.38, 0.50, 0.38), ("poly", ((0.26, 0.64), (0.74, 0.64), (0.58, 0.90), (0.42, 0.90))),
                ("rect", 0.36, 0.84, 0.64, 1.0)),
    "lighthouse": (("poly", ((0.12, 1.0), (0.30, 0.22), (0.70, 0.22), (0.88, 1.0))), ("rect", 0.24, 0.08, 0.76, 0.24),
                   ("poly", ((0.18, 0.10), (0.50, 0.0), (0.82, 0.10)))),
    "tent": (("poly", ((0.0, 1.0), (0.5, 0.0), (1.0, 1.0))),),
    "kite": (("poly", ((0.5, 0.0), (1.0, 0.30), (0.5, 0.76), (0.0, 0.30))), ("rect", 0.42, 0.70, 0.58, 1.0)),
    "umbrella": (("upper_ellipse", 0.5, 0.48, 0.5, 0.48), ("rect", 0.44, 0.40, 0.56, 1.0)),
    "fish": (("ellipse", 0.58, 0.50, 0.42, 0.36), ("poly", ((0.0, 0.08), (0.26, 0.50), (0.0, 0.92)))),
}


@dataclass(frozen=True)
class StyleEffect:
    """What a style does to the picture; parameters add up over the named styles."""

    soft_focus: float = 0.0  # share of a 3x3 box blur blended in
    sharpen: float = 0.0  # unsharp-mask amount: x + a (x - blur(x))
    detail: float = 0.0  # amplitude of uniform luminance noise in [-a, a]
    saturation: float = 0.0  # log chroma factor: chroma x exp(s)
    contrast: float = 0.0  # log contrast factor: 0.5 + (x - 0.5) x exp(c)
    warmth: float = 0.0  # R x (1 + w), B x (1 - w)
    brightness: float = 0.0  # log brightness factor: x exp(b)
    haze: float = 0.0  # share of light grey blended in
    vignette: float = 0.0  # corners darkened by this share


STYLE_EFFECTS: dict[str, StyleEffect] = {
    "vivid colors": StyleEffect(saturation=0.35),
    "high contrast": StyleEffect(contrast=0.25),
    "highly detailed": StyleEffect(detail=0.06),
    "intricate": StyleEffect(detail=0.04),
    "sharp focus": StyleEffect(sharpen=0.8),
    "golden hour": StyleEffect(warmth=0.06, brightness=0.05),
    "warm light": StyleEffect(warmth=0.07),
    "cinematic": StyleEffect(vignette=0.25, contrast=0.1),
    "bright lighting": StyleEffect(brightness=0.12),
    "muted tones": StyleEffect(saturation=-0.6),
    "soft light": StyleEffect(contrast=-0.35),
    "hazy": StyleEffect(haze=0.2),
    "soft focus": StyleEffect(soft_focus=0.6),
    "digital art": StyleEffect(),
    "trending on artstation": StyleEffect(),
}
HAZE_RGB: RGB = (0.82, 0.83, 0.86)
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def total_effect(styles: tuple[str, ...]) -> StyleEffect:
    """The summed parameters of the distinct styles named."""
    fields = StyleEffect.__dataclass_fields__
    sums = {k: sum(getattr(STYLE_EFFECTS[s], k) for s in set(styles)) for k in fields}
    return StyleEffect(**sums)


# ---------------------------------------------------------------------------------------------
# silhouettes


@lru_cache(maxsize=4096)
def silhouette(noun: str, height: int) -> np.ndarray:
    """The boolean pixel mask of an object `height` pixels tall (width = aspect x height)."""
    width = max(1, round(OBJECT_BY_NOUN[noun].aspect * height))
    v = ((np.arange(height, dtype=np.float32) + 0.5) / height)[:, None]
    u = ((np.arange(width, dtype=np.float32) + 0.5) / width)[None, :]
    mask = np.zeros((height, width), dtype=bool)
    for part in SILHOUETTES[noun]:
        mask |= _part_mask(part, u, v)
    mask.setflags(write=False)
    return mask


def _part_mask(part: tuple, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """One primitive of a silhouette on the (u, v) grid."""
    kind = part[0]
    if kind in ("ellipse", "upper_ellipse"):
        _, cu, cv, ru, rv = part
        inside = ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1.0
        return inside & (v <= cv) if kind == "upper_ellipse" else inside
    if kind == "rect":
        _, u0, v0, u1, v1 = part
        return (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1)
    points = part[1]
    inside = np.ones(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
    area = sum(points[k][0] * points[k - 1][1] - points[k - 1][0] * points[k][1] for k in range(len(points)))
    sign = 1.0 if area > 0 else -1.0
    for k in range(len(points)):
        (u0, v0), (u1, v1) = points[k - 1], points[k]
        inside &= sign * ((u1 - u0) * (v - v0) - (v1 - v0) * (u - u0)) <= 1e-6
    return inside


def object_height(size: str | None, image_height: int, shrink: float = 1.0) -> int:
    """Pixel height of an object of a size word in an image of this height."""
    return max(3, round(SIZE_HEIGHT[size] * image_height * shrink))


# ---------------------------------------------------------------------------------------------
# backgrounds


def _gradient(top: RGB, bottom: RGB, rows: int, width: int) -> np.ndarray:
    """A vertical colour gradient, [rows, width, 3]."""
    t = np.linspace(0.0, 1.0, rows, dtype=np.float32)[:, None, None] if rows > 1 else np.zeros((1, 1, 1), np.float32)
    a, b = np.asarray(top, np.float32), np.asarray(bottom, np.float32)
    return np.broadcast_to(a + (b - a) * t, (rows, width, 3)).copy()


def _sky_and_ground(h: int, w: int, horizon: float, sky: tuple[RGB, RGB], ground: tuple[RGB, RGB]) -> np.ndarray:
    """Sky gradient above the horizon row, ground gradient below."""
    cut = int(round(horizon * h))
    return np.concatenate([_gradient(*sky, cut, w), _gradient(*ground, h - cut, w)], axis=0)


def _sprinkle(img: np.ndarray, rng: np.random.Generator, rows: slice, share: float, colours: list[RGB]) -> None:
    """Single pixels of the given colours scattered over a band of rows (stars, flowers)."""
    band = img[rows]
    hit = rng.random(band.shape[:2]) < share
    pick = rng.integers(len(colours), size=band.shape[:2])
    palette = np.asarray(colours, np.float32)
    band[hit] = palette[pick[hit]]


def paint_background(setting: str | None, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """The setting's background as float32 RGB [h, w, 3] in [0, 1]."""
    if setting is None:
        return np.broadcast_to(np.asarray(PLAIN_RGB, np.float32), (h, w, 3)).copy()
    return BACKGROUNDS[setting](h, w, rng)


def _desert(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Pale sky over sand with soft dune ripples."""
    img = _sky_and_ground(h, w, 0.45, ((0.70, 0.80, 0.92), (0.88, 0.88, 0.86)),
                          ((0.90, 0.80, 0.58), (0.84, 0.72, 0.50)))
    cut = int(round(0.45 * h))
    y = np.arange(h - cut, dtype=np.float32)[:, None]
    x = np.arange(w, dtype=np.float32)[None, :]
    ripple = 0.03 * np.sin(2 * np.pi * (y / (0.12 * h) + 0.15 * np.sin(2 * np.pi * x / w + rng.uniform(0, 6.3))))
    img[cut:] += ripple[..., None]
    return img


def _snowy_field(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Grey-blue winter sky over white snow with faint shading."""
    img = _sky_and_ground(h, w, 0.4, ((0.74, 0.78, 0.84), (0.86, 0.88, 0.90)), ((0.95, 0.96, 0.98), (0.92, 0.93, 0.96)))
    cut = int(round(0.4 * h))
    img[cut:] -= 0.02 * rng.random((h - cut, w, 1), dtype=np.float32)
    return img


def _forest(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Dark green canopy over a green floor, with leaf blotches and tree trunks."""
    img = _sky_and_ground(h, w, 0.55, ((0.08, 0.26, 0.10), (0.12, 0.34, 0.12)),
                          ((0.18, 0.40, 0.12), (0.14, 0.34, 0.10)))
    coarse = rng.random((max(1, h // 8), max(1, w // 8), 1), dtype=np.float32)
    blotch = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)[:h, :w]
    blotch = np.pad(blotch, ((0, h - blotch.shape[0]), (0, w - blotch.shape[1]), (0, 0)), mode="edge")
    img *= 0.8 + 0.4 * blotch
    trunk_w = max(1, w // 40)
    for x in rng.choice(w - trunk_w, size=max(2, w // 12), replace=False):
        img[:, x : x + trunk_w] = (0.24, 0.16, 0.08)
    return img


def _ocean(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Blue sky over a deep blue sea with short light wave dashes."""
    img = _sky_and_ground(h, w, 0.4, ((0.45, 0.68, 0.92), (0.70, 0.84, 0.96)), ((0.08, 0.36, 0.64), (0.03, 0.22, 0.48)))
    cut = int(round(0.4 * h))
    waves = rng.random((h - cut, w)) < 0.04
    waves |= np.roll(waves, 1, axis=1)
    img[cut:][waves] += np.float32(0.15)
    return img


def _city(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Overcast sky over grey buildings of random heights with lit windows."""
    img = _gradient((0.60, 0.64, 0.70), (0.74, 0.76, 0.78), h, w)
    x = 0
    while x < w:
        bw = int(rng.integers(max(2, w // 10), max(3, w // 5)))
        top = int(rng.uniform(0.35, 0.65) * h)
        shade = np.float32(rng.uniform(0.28, 0.36))
        img[top:, x : x + bw] = (shade, shade, shade + 0.03)
        windows = rng.random((h - top, min(bw, w - x))) < 0.08
        img[top:, x : x + bw][windows] = (0.92, 0.82, 0.42)
        x += bw
    return img


def _night_sky(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Near-black blue sky with stars over a dark ground."""
    img = _sky_and_ground(h, w, 0.85, ((0.02, 0.03, 0.10), (0.05, 0.07, 0.20)),
                          ((0.03, 0.04, 0.07), (0.02, 0.03, 0.05)))
    _sprinkle(img, rng, slice(0, int(0.85 * h)), 0.015, [(0.95, 0.95, 0.90)])
    return img


def _meadow(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Bright blue sky over bright green grass with scattered flowers."""
    img = _sky_and_ground(h, w, 0.4, ((0.48, 0.72, 1.0), (0.72, 0.86, 1.0)), ((0.38, 0.80, 0.26), (0.26, 0.64, 0.18)))
    flowers = [(0.95, 0.20, 0.20), (0.98, 0.90, 0.20), (0.98, 0.98, 0.98), (0.70, 0.30, 0.90)]
    _sprinkle(img, rng, slice(int(round(0.4 * h)), h), 0.03, flowers)
    return img


def _mountain_lake(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Light sky, a purple-grey mountain ridge across the whole width, a teal lake below."""
    img = _sky_and_ground(h, w, 0.6, ((0.62, 0.76, 0.95), (0.80, 0.88, 0.97)), ((0.12, 0.46, 0.58), (0.08, 0.36, 0.50)))
    lake = int(round(0.6 * h))
    x = np.arange(w, dtype=np.float32)
    peaks = rng.uniform(0.18, 0.35, size=3) * h
    centres = rng.uniform(0.1, 0.9, size=3) * w
    ridge = np.min(peaks[:, None] + 0.9 * np.abs(x[None, :] - centres[:, None]), axis=0)
    ridge = np.minimum(ridge, 0.5 * h)
    y = np.arange(h, dtype=np.float32)[:, None]
    mountain = (y >= ridge[None, :]) & (y < lake)
    img[mountain] = (0.46, 0.43, 0.56)
    return img


BACKGROUNDS = {
    "desert": _desert,
    "snowy field": _snowy_field,
    "forest": _forest,
    "ocean": _ocean,
    "city": _city,
    "night sky": _night_sky,
    "meadow": _meadow,
    "mountain lake": _mountain_lake,
}


# ---------------------------------------------------------------------------------------------
# layout and objects


def outline_width(h: int) -> int:
    """Thickness of the objects' outline: 1 pixel per 40 rows of image, at least 1."""
    return max(1, round(h / 40))


def layout(scene: Scene, h: int, w: int, rng: np.random.Generator) -> list[tuple[str, str, int, int, int]]:
    """(noun, colour, height, top, left) of every object copy: non-overlapping, inside the margins."""
    items = [(t.noun, t.colour or OBJECT_BY_NOUN[t.noun].colour, t.size) for t in scene.things for _ in range(t.count)]
    shrink = 1.0
    while True:
        placed: list[tuple[str, str, int, int, int]] = []
        boxes: list[tuple[int, int, int, int]] = []
        for noun, colour, size in items:
            oh = object_height(size, h, shrink)
            ow = silhouette(noun, oh).shape[1]
            spot = _place(oh, ow, h, w, boxes, rng)
            if spot is None:
                break
            boxes.append((spot[0], spot[1], spot[0] + oh, spot[1] + ow))
            placed.append((noun, colour, oh, spot[0], spot[1]))
        else:
            return placed
        shrink *= 0.85


def _place(oh: int, ow: int, h: int, w: int, boxes: list, rng: np.random.Generator) -> tuple[int, int] | None:
    """A top-left corner for an oh x ow box, uniform over the free ones, or None if there is none.
    Free: inside the margin (outline width + 2) and at least twice the outline width from every placed box."""
    line = outline_width(h)
    margin, gap = line + 2, 2 * line
    span_y, span_x = h - 2 * margin - oh, w - 2 * margin - ow
    if span_y < 0 or span_x < 0:
        return None
    free = np.ones((span_y + 1, span_x + 1), dtype=bool)
    for top, left, bottom, right in boxes:
        y0, y1 = max(0, top - gap - oh + 1 - margin), max(0, bottom + gap - margin)
        x0, x1 = max(0, left - gap - ow + 1 - margin), max(0, right + gap - margin)
        free[y0:y1, x0:x1] = False
    spots = np.flatnonzero(free)
    if spots.size == 0:
        return None
    y, x = divmod(int(spots[int(rng.integers(spots.size))]), span_x + 1)
    return margin + y, margin + x


def draw_objects(img: np.ndarray, placed: list[tuple[str, str, int, int, int]]) -> None:
    """Paint each object's outline (the silhouette grown by outline_width, 4-neighbour steps) and
    then its silhouette in its colour, in place."""
    line = outline_width(img.shape[0])
    for noun, colour, oh, top, left in placed:
        mask = silhouette(noun, oh)
        body = np.pad(mask, line)
        grown = body.copy()
        for _ in range(line):
            step = grown.copy()
            step[1:] |= grown[:-1]
            step[:-1] |= grown[1:]
            step[:, 1:] |= grown[:, :-1]
            step[:, :-1] |= grown[:, 1:]
            grown = step
        region = img[top - line : top + oh + line, left - line : left + mask.shape[1] + line]
        region[grown & ~body] = OUTLINE_RGB
        region[body] = COLOUR_RGB[colour]


# ---------------------------------------------------------------------------------------------
# styles


def box_blur(img: np.ndarray) -> np.ndarray:
    """3x3 box blur with edge padding (channels last, or a single channel)."""
    pad = np.pad(img, ((1, 1), (1, 1)) + ((0, 0),) * (img.ndim - 2), mode="edge")
    h, w = img.shape[:2]
    rows = pad[:-2] + pad[1:-1] + pad[2:]
    return (rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:])[:h, :w] / 9.0


def luminance(img: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of a float RGB image, [h, w]."""
    return img @ LUMA


def apply_styles(img: np.ndarray, effect: StyleEffect, rng: np.random.Generator) -> np.ndarray:
    """The style transforms, in the fixed order of the module docstring."""
    if effect.soft_focus:
        img = (1 - effect.soft_focus) * img + effect.soft_focus * box_blur(img)
    if effect.sharpen:
        img = img + effect.sharpen * (img - box_blur(img))
    if effect.detail:
        noise = rng.uniform(-effect.detail, effect.detail, size=img.shape[:2]).astype(np.float32)
        img = img + noise[..., None]
    if effect.saturation:
        lum = luminance(img)[..., None]
        img = lum + np.float32(np.exp(effect.saturation)) * (img - lum)
    if effect.contrast:
        img = 0.5 + np.float32(np.exp(effect.contrast)) * (img - 0.5)
    if effect.warmth:
        img = img * np.asarray((1 + effect.warmth, 1.0, 1 - effect.warmth), np.float32)
    if effect.brightness:
        img = img * np.float32(np.exp(effect.brightness))
    if effect.haze:
        img = (1 - effect.haze) * img + effect.haze * np.asarray(HAZE_RGB, np.float32)
    if effect.vignette:
        img = img * vignette_mask(img.shape[0], img.shape[1], effect.vignette)[..., None]
    return img


@lru_cache(maxsize=64)
def vignette_mask(h: int, w: int, strength: float) -> np.ndarray:
    """1 - strength * r^2, r^2 = ((x - cx)/cx)^2/2 + ((y - cy)/cy)^2/2 (1 at the corners)."""
    y = (np.arange(h, dtype=np.float32) + 0.5) / h * 2 - 1
    x = (np.arange(w, dtype=np.float32) + 0.5) / w * 2 - 1
    r2 = (y[:, None] ** 2 + x[None, :] ** 2) / 2
    out = (1 - strength * r2).astype(np.float32)
    out.setflags(write=False)
    return out


# ---------------------------------------------------------------------------------------------
# the renderer


def render_scene(scene: Scene, seed: int, h: int, w: int) -> np.ndarray:
    """uint8 RGB [h, w, 3] of a scene under a seed."""
    bg_rng, layout_rng, detail_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    img = paint_background(scene.setting, h, w, bg_rng)
    draw_objects(img, layout(scene, h, w, layout_rng))
    if scene.styles:
        img = apply_styles(img, total_effect(scene.styles), detail_rng)
    return np.round(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)


class WorldRenderer:
    """The world's text-to-image model: parse each prompt, draw its Scene under its seed."""

    device = torch.device("cpu")

    def render(self, prompts: list[str], seeds: list[int], height: int, width: int) -> list[Image.Image]:
        """One RGB image per (prompt, seed >= 0); unknown words change nothing."""
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        return [Image.fromarray(render_scene(parse(p), int(s), height, width), "RGB") for p, s in zip(prompts, seeds)]
