"""A synthetic concept dataset in the Broden format, drawn with the shapes generator.

``make_synthetic(folder, n, seed)`` writes ``n`` images with six categories of
concepts: pixel-labelled ``color`` (the 11 Broden colour names), ``object`` (the
shapes), ``part`` (tip, rim, center of a shape), ``texture`` (striped, dotted, ...),
``material`` (wood grain, noise) and a whole-image ``scene`` (the background layout).
Colour, texture and material are drawn independently of the shape, so only the
object (and the tips' presence) follows the class a shapes model was trained on. Every name here is also
importable from ``xailab.data.broden``, which reads the format.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .broden_writer import write
from .shapes import CLASSES, _inside

__all__ = ["make_synthetic", "synthetic_labels", "COLORS", "PARTS", "TEXTURES", "MATERIALS", "SCENES",
           "CATEGORIES"]

COLORS = {  # the 11 Broden colour names and a typical RGB value
    "black-c": (0.08, 0.08, 0.08), "blue-c": (0.12, 0.25, 0.85), "brown-c": (0.5, 0.3, 0.12),
    "green-c": (0.15, 0.65, 0.2), "grey-c": (0.5, 0.5, 0.5), "orange-c": (1.0, 0.55, 0.05),
    "pink-c": (1.0, 0.6, 0.78), "purple-c": (0.5, 0.15, 0.62), "red-c": (0.85, 0.1, 0.1),
    "white-c": (0.95, 0.95, 0.95), "yellow-c": (0.95, 0.9, 0.12)}
PARTS = ["tip", "rim", "center"]
TEXTURES = ["striped", "dotted", "chequered", "zigzagged", "blotchy"]
MATERIALS = ["wood", "noise"]     # surfaces on untextured regions: wavy grain lines, 2 px speckle
SCENES = {  # whole-image background: (sky colours, ground colours)
    "beach": (["blue-c", "white-c"], ["yellow-c", "orange-c"]),
    "forest": (["green-c", "white-c"], ["brown-c", "green-c"]),
    "night": (["black-c", "purple-c"], ["grey-c", "black-c"]),
    "snowfield": (["white-c", "grey-c"], ["white-c", "blue-c"]),
    "desert": (["orange-c", "yellow-c"], ["brown-c", "orange-c"]),
    "city": (["grey-c", "blue-c"], ["grey-c", "black-c"])}
CATEGORIES = ["color", "object", "part", "scene", "texture", "material"]
CHUNK = 64                  # images drawn per random generator
TIP_RADIUS = np.array([9.0, 0.9, 0.7, 0.62, 0.7, 9.0])   # per shape; circle and heart have no tips


def synthetic_labels() -> list[tuple[str, str]]:
    """``(name, category)`` of every label of the synthetic dataset, number = position + 1."""
    return ([(c, "color") for c in COLORS] + [(o, "object") for o in CLASSES]
            + [(p, "part") for p in PARTS] + [(s, "scene") for s in SCENES]
            + [(t, "texture") for t in TEXTURES] + [(m, "material") for m in MATERIALS])


NUMBER = {name: k + 1 for k, (name, _) in enumerate(synthetic_labels())}
PALETTE = np.array(list(COLORS.values()), dtype=np.float32)
COLOR_NUMBER = np.array([NUMBER[c] for c in COLORS])      # colour index -> label number


def _pattern(kind, x, y, period, angle, phase, waves):
    """Binary texture pattern (0/1) evaluated at coordinates x, y [n, H, W]."""
    c, s = np.cos(angle), np.sin(angle)
    a = (c * x + s * y) / period + phase
    b = (-s * x + c * y) / period + phase
    if kind == "striped":
        return np.floor(2 * a) % 2 == 1
    if kind == "chequered":
        return (np.floor(a) + np.floor(b)) % 2 == 1
    if kind == "dotted":
        da, db = a - np.round(a), b - np.round(b)
        return da * da + db * db < 0.09
    if kind == "zigzagged":
        tri = np.abs(2 * (b - np.floor(b + 0.5)))      # triangle wave in [0, 1]
        return np.floor(2 * (a + 0.6 * tri)) % 2 == 1
    # blotchy: a smooth random field from a few sinusoids, thresholded at zero
    field = 0.0
    for k in range(waves.shape[1]):
        fx, fy, ph = waves[:, k, 0, None, None], waves[:, k, 1, None, None], waves[:, k, 2, None, None]
        field = field + np.sin((fx * x + fy * y) / period + ph)
    return field > 0


def _material_pattern(kind, x, y, period, angle, phase):
    """Binary material pattern (0/1) at coordinates x, y [n, H, W]: ``wood``, thin grain
    lines bent by two slow waves; ``noise``, 2 x 2 pixel cells on or off at random (a hash
    of the cell, so every resolution sees the same cells)."""
    if kind == "wood":
        c, s = np.cos(angle), np.sin(angle)
        a = (c * x + s * y) / period
        b = (-s * x + c * y) / period
        grain = a + 0.6 * np.sin(0.4 * b + 6.3 * phase) + 0.2 * np.sin(1.3 * b + 3.1 * phase)
        return grain - np.floor(grain) < 0.3
    cells = np.floor(np.asarray(x, np.float64) / 2) * 12.9898 + np.floor(np.asarray(y, np.float64) / 2) * 78.233
    h = np.sin(cells + 100.0 * phase) * 43758.5453
    return h - np.floor(h) < 0.5


def _material_params(rng: np.random.Generator, n: int, size: int) -> dict:
    """Which regions carry a material (half of the untextured ones), which, and its pattern."""
    return dict(on=rng.uniform(0, 1, n) < 0.5, kind=rng.integers(0, len(MATERIALS), n),
                pattern=dict(period=rng.uniform(0.06, 0.1, (n, 1, 1)) * size,
                             angle=rng.uniform(0, np.pi, (n, 1, 1)), phase=rng.uniform(0, 1, (n, 1, 1))))


def _texture_params(rng: np.random.Generator, n: int, size: int) -> dict:
    """Random period, angle, phase and blotch waves of one texture per image."""
    return dict(period=rng.uniform(0.07, 0.12, (n, 1, 1)) * size,
                angle=rng.uniform(0, np.pi, (n, 1, 1)),
                phase=rng.uniform(0, 1, (n, 1, 1)),
                waves=np.concatenate([rng.normal(0, 1.2, (n, 3, 2)),
                                      rng.uniform(0, 2 * np.pi, (n, 3, 1))], 2))


def _draw_parameters(rng: np.random.Generator, n: int, size: int) -> SimpleNamespace:
    """Everything random about ``n`` images except their pixel noise (drawn in this order)."""
    colour = {c: k for k, c in enumerate(COLORS)}
    p = SimpleNamespace()
    p.scene = rng.integers(0, len(SCENES), n)
    p.horizon = rng.uniform(0.35, 0.75, n) * size
    p.sky = np.array([[colour[c] for c in sky] for sky, _ in SCENES.values()])
    p.ground = np.array([[colour[c] for c in ground] for _, ground in SCENES.values()])
    p.sky_pick = rng.integers(0, 2, n)
    p.ground_pick = rng.integers(0, 2, n)
    p.ground_textured = rng.uniform(0, 1, n) < 0.3
    p.ground_texture = rng.integers(0, len(TEXTURES), n)
    p.shape = rng.integers(0, len(CLASSES), n)
    p.radius = rng.uniform(0.2, 0.32, n) * size
    p.cx = rng.uniform(0, 1, n) * (size - 2 * p.radius) + p.radius
    p.cy = rng.uniform(0, 1, n) * (size - 2 * p.radius) + p.radius
    p.rotation = rng.uniform(0, 2 * np.pi, n)
    p.object_colour = rng.integers(0, len(COLORS), n)
    p.object_colour2 = (p.object_colour + rng.integers(1, len(COLORS), n)) % len(COLORS)
    p.object_textured = rng.uniform(0, 1, n) < 0.6
    p.object_texture = rng.integers(0, len(TEXTURES), n)
    p.ground_pattern = _texture_params(rng, n, size)
    p.object_pattern = _texture_params(rng, n, size)
    p.tint = rng.normal(0, 0.04, (n, 3)).astype(np.float32)
    return p


def _draw_materials(p: SimpleNamespace, rng: np.random.Generator, size: int) -> SimpleNamespace:
    """Add the materials of ground and object, from their own generator (so that the
    other parameters and the pixel noise stay those of the images without materials)."""
    n = len(p.scene)
    p.ground_material = _material_params(rng, n, size)
    p.ground_material["on"] &= ~p.ground_textured
    p.object_material = _material_params(rng, n, size)
    p.object_material["on"] &= ~p.object_textured
    return p


def _per_image(a: np.ndarray) -> np.ndarray:
    return a[:, None, None]


def _textures(textured, kind, params: dict, x, y, names=TEXTURES, pattern=_pattern):
    """For each texture (or material) in use: its label number, the images that carry it
    and its 0/1 pattern there."""
    for k, name in enumerate(names):
        sel = textured & (kind == k)
        if sel.any():
            yield NUMBER[name], sel, pattern(name, x[sel], y[sel], **{q: v[sel] for q, v in params.items()})


def _materials(m: dict, x, y):
    return _textures(m["on"], m["kind"], m["pattern"], x, y, MATERIALS, _material_pattern)


def _background(p: SimpleNamespace, x, y):
    """Colour index, texture and material label of the sky above the horizon and the ground
    below, each of one scene colour; a textured ground, or one of a material, mixes in the
    scene's other colour."""
    below = y > _per_image(p.horizon)
    col = np.where(below, _per_image(p.ground[p.scene, p.ground_pick]), _per_image(p.sky[p.scene, p.sky_pick]))
    other = np.where(below, _per_image(p.ground[p.scene, 1 - p.ground_pick]),
                     _per_image(p.sky[p.scene, 1 - p.sky_pick]))
    tex = np.zeros(x.shape, dtype=np.int64)
    for number, sel, on in _textures(p.ground_textured, p.ground_texture, p.ground_pattern, x, y):
        col[sel] = np.where(below[sel] & on, other[sel], col[sel])
        tex[sel] = np.where(below[sel], number, 0)
    mat = np.zeros(x.shape, dtype=np.int64)
    for number, sel, on in _materials(p.ground_material, x, y):
        col[sel] = np.where(below[sel] & on, other[sel], col[sel])
        mat[sel] = np.where(below[sel], number, 0)
    return col, tex, mat


def _label_maps(p: SimpleNamespace, step: float, side: int):
    """Colour index, object, part, texture and material label maps [n, side, side] on a grid of
    pixels spaced ``step`` image pixels: the object drawn over the background."""
    g = (np.arange(side, dtype=np.float32) + 0.5) * step
    y, x = np.meshgrid(g, g, indexing="ij")
    shape = (len(p.scene), side, side)
    x, y = np.broadcast_to(x, shape), np.broadcast_to(y, shape)
    col, tex, mat = _background(p, x, y)
    dx, dy = x - _per_image(p.cx), y - _per_image(p.cy)
    c, s = np.cos(_per_image(p.rotation)), np.sin(_per_image(p.rotation))
    r = _per_image(p.radius)
    u, v = (c * dx + s * dy) / r, (-s * dx + c * dy) / r
    kind = np.broadcast_to(_per_image(p.shape), u.shape)
    rho = np.sqrt(u * u + v * v)
    inside = _inside(kind, u, v)
    core = _inside(kind, u / 0.6, v / 0.6)
    part = np.select([inside & (rho > TIP_RADIUS[kind]), inside & ~core, inside & (rho < 0.3)],
                     [NUMBER["tip"], NUMBER["rim"], NUMBER["center"]], 0)
    ocol = np.broadcast_to(_per_image(p.object_colour), u.shape).copy()
    for _, sel, on in _textures(p.object_textured, p.object_texture, p.object_pattern, x, y):
        ocol[sel] = np.where(on, _per_image(p.object_colour2[sel]), ocol[sel])
    omat = np.zeros(u.shape, dtype=np.int64)
    for number, sel, on in _materials(p.object_material, x, y):
        ocol[sel] = np.where(on, _per_image(p.object_colour2[sel]), ocol[sel])
        omat[sel] = number
    otex = np.where(_per_image(p.object_textured), NUMBER[TEXTURES[0]] + _per_image(p.object_texture), 0)
    return (np.where(inside, ocol, col), np.where(inside, NUMBER[CLASSES[0]] + kind, 0), part,
            np.where(inside, otex, tex), np.where(inside, omat, mat))


def _draw(rng: np.random.Generator, n: int, size: int, material_rng: np.random.Generator):
    """n images of ``size`` (uint8 [n, size, size, 3]), their colour, object, part,
    texture and material label maps at ``size // 2`` and their scene label numbers."""
    p = _draw_materials(_draw_parameters(rng, n, size), material_rng, size)
    col = _label_maps(p, 1.0, size)[0]
    img = PALETTE[col] + p.tint[:, None, None, :]
    img += rng.normal(0, 0.03, img.shape).astype(np.float32)
    img = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    col, obj, part, tex, mat = _label_maps(p, 2.0, size // 2)
    scene = np.array([NUMBER[name] for name in SCENES])[p.scene]
    return img, COLOR_NUMBER[col], obj, part, tex, mat, scene


def _records(n: int, seed: int, size: int):
    """``broden.write`` records of images 0 .. n-1; chunk c is drawn from its own generator."""
    for c in range(-(-n // CHUNK)):
        rng = np.random.default_rng(np.random.SeedSequence([seed, c, size, 6]))
        material_rng = np.random.default_rng(np.random.SeedSequence([seed, c, size, 7]))
        img, col, obj, part, tex, mat, scene = _draw(rng, CHUNK, size, material_rng)
        for j in range(min(CHUNK, n - c * CHUNK)):
            i = c * CHUNK + j
            yield {"image": img[j], "name": f"synthetic_{i:06d}", "split": "train" if i % 5 else "val",
                   "color": [col[j]], "object": [obj[j]] if obj[j].any() else [],
                   "part": [part[j]] if part[j].any() else [], "scene": [int(scene[j])],
                   "texture": [tex[j]] if tex[j].any() else [],
                   "material": [mat[j]] if mat[j].any() else []}


def make_synthetic(folder, n: int, seed: int = 0, size: int = 128) -> Path:
    """Write ``n`` synthetic concept images (``size`` x ``size``, segmentations at half
    size) into ``folder`` in the Broden format; deterministic from ``seed``.

    Categories: ``color`` (pixel, 11 Broden colour names), ``object`` (pixel, the
    shapes), ``part`` (pixel: a shape's ``tip``, ``rim``, ``center``), ``texture``
    (pixel: on textured objects and textured ground), ``material`` (pixel: ``wood``
    grain or ``noise`` on half of the untextured objects and grounds), ``scene`` (whole
    image: the background). Image i is the same whatever ``n`` (drawn in chunks of 64).
    """
    if n < 1:
        raise ValueError(f"n must be a positive number of images, got {n}")
    if size < 16 or size % 2:
        raise ValueError(f"size must be an even number of pixels >= 16, got {size}")
    return write(folder, CATEGORIES, synthetic_labels(), _records(n, seed, size))
