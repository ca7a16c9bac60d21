"""The synthetic shapes dataset: deterministic, vectorised, with ground truth.

Every image shows one object from ``CLASSES`` (random colour, size, position and
rotation) on a textured background with distractor strokes. Ground truth per
image: label, boolean object mask and bounding box. With ``shortcut=True`` a small
watermark appears in the bottom-right corner: in the train and val splits it comes
with the class ``SHORTCUT_CLASS`` only (95% of those images), in the test split
it appears on half of all images whatever their class. A model that learns the
watermark instead of the shape is the course's "Clever Hans" case.

Images are drawn in chunks of ``CHUNK`` with a random generator seeded from
(seed, split, shortcut, chunk index), so ``shapes("train", 100)`` is exactly the
first 100 images of ``shapes("train", 10_000)``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

CLASSES = ["circle", "square", "triangle", "star", "cross", "heart"]
SHORTCUT_CLASS = "heart"
SPLITS = {"train": 0, "val": 1, "test": 2}
CHUNK = 256
WATERMARK_SIZE = 7          # pixels at size 64; scales with the image size
SHORTCUT_RATE = 0.95        # share of SHORTCUT_CLASS images marked in train/val
TEST_MARK_RATE = 0.5        # share of all test images marked, class-independent


def _inside(label: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test in the object's unit frame (radius 1), for every label at once."""
    out = np.zeros(u.shape, dtype=bool)
    for k, name in enumerate(CLASSES):
        sel = label == k
        if not sel.any():
            continue
        a, b = u[sel], v[sel]
        if name == "circle":
            m = a * a + b * b <= 0.9
        elif name == "square":
            m = np.maximum(np.abs(a), np.abs(b)) <= 0.75
        elif name == "triangle":  # equilateral, circumradius 1: inradius 0.5
            m = (b <= 0.5) & (0.866 * a - 0.5 * b <= 0.5) & (-0.866 * a - 0.5 * b <= 0.5)
        elif name == "star":      # five points, inner radius 0.45
            theta = np.mod(np.arctan2(b, a), 2 * np.pi / 5)
            phi = np.minimum(theta, 2 * np.pi / 5 - theta)
            rho = np.sqrt(a * a + b * b)
            px, py = rho * np.cos(phi), rho * np.sin(phi)
            ix, iy = 0.45 * np.cos(np.pi / 5), 0.45 * np.sin(np.pi / 5)
            # inside when on the origin's side of the line tip (1, 0) -> inner vertex
            m = (ix - 1.0) * py - iy * (px - 1.0) >= 0
        elif name == "cross":
            aa, bb = np.abs(a), np.abs(b)
            m = ((aa <= 0.28) & (bb <= 0.9)) | ((aa <= 0.9) & (bb <= 0.28))
        else:                     # heart: (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0
            x, y = 1.15 * a, -1.15 * b + 0.15
            m = (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0
        out[sel] = m
    return out


def _watermark(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean mask of the watermark and its RGB pattern (a small checkerboard)."""
    s = max(3, round(WATERMARK_SIZE * size / 64))
    mask = np.zeros((size, size), dtype=bool)
    y0 = x0 = size - s - 2
    mask[y0:y0 + s, x0:x0 + s] = True
    yy, xx = np.mgrid[:size, :size]
    checker = ((yy // 2 + xx // 2) % 2).astype(np.float32)
    rgb = np.stack([checker, 1 - checker, checker * 0 + 1.0])  # magenta / cyan
    return mask, rgb


def _background(rng, n: int, s: int, xx, yy):
    """A muted base colour plus two random gratings and fine noise: (image, base colour)."""
    f32 = np.float32
    base = rng.uniform(0.15, 0.6, (n, 3, 1, 1)).astype(f32)
    img = np.repeat(base, s, 2).repeat(s, 3)
    for _ in range(2):
        freq = rng.uniform(0.08, 0.5, (n, 1, 1)).astype(f32)
        ang = rng.uniform(0, np.pi, (n, 1, 1)).astype(f32)
        phase = rng.uniform(0, 2 * np.pi, (n, 1, 1)).astype(f32)
        amp = rng.uniform(0.03, 0.12, (n, 3, 1, 1)).astype(f32)
        wave = np.sin(freq * (np.cos(ang) * xx + np.sin(ang) * yy) + phase)
        img += amp * wave[:, None]
    img += rng.normal(0, 0.03, img.shape).astype(f32)
    return img, base


def _strokes(rng, img, n: int, s: int, xx, yy, k: int = 3):
    """Clutter: ``k`` short strokes of random colour painted over ``img``."""
    f32 = np.float32
    p0 = rng.uniform(0, s, (n, k, 2)).astype(f32)
    ang = rng.uniform(0, 2 * np.pi, (n, k)).astype(f32)
    length = rng.uniform(0.1, 0.22, (n, k)).astype(f32) * s
    p1 = p0 + np.stack([np.cos(ang), np.sin(ang)], -1) * length[..., None]
    col = rng.uniform(0, 1, (n, k, 3)).astype(f32)
    d = p1 - p0
    t = ((xx - p0[..., 0, None, None]) * d[..., 0, None, None]
         + (yy - p0[..., 1, None, None]) * d[..., 1, None, None]) / (d ** 2).sum(-1)[..., None, None]
    t = np.clip(t, 0, 1)
    dx = xx - (p0[..., 0, None, None] + t * d[..., 0, None, None])
    dy = yy - (p0[..., 1, None, None] + t * d[..., 1, None, None])
    stroke = dx * dx + dy * dy <= (0.02 * s) ** 2 + 1.0
    for j in range(k):
        img = np.where(stroke[:, j, None], col[:, j, :, None, None], img)
    return img


def _object(rng, img, base, label, s: int, xx, yy):
    """The shape of class ``label``, drawn last so its mask is exact: (image, mask)."""
    n, f32 = len(label), np.float32
    radius = rng.uniform(0.18, 0.32, n).astype(f32) * s
    cx = rng.uniform(0, 1, n).astype(f32) * (s - 2 * radius) + radius
    cy = rng.uniform(0, 1, n).astype(f32) * (s - 2 * radius) + radius
    rot = rng.uniform(0, 2 * np.pi, n).astype(f32)
    dx, dy = xx - cx[:, None, None], yy - cy[:, None, None]
    c, si = np.cos(rot)[:, None, None], np.sin(rot)[:, None, None]
    u = (c * dx + si * dy) / radius[:, None, None]
    v = (-si * dx + c * dy) / radius[:, None, None]
    mask = _inside(label[:, None, None].repeat(s, 1).repeat(s, 2), u, v)
    colour = rng.uniform(0, 1, (n, 3)).astype(f32)
    bg = base[:, :, 0, 0]
    dull = np.abs(colour - bg).sum(1) < 0.9
    colour[dull] = np.clip(1.0 - bg[dull] + rng.uniform(-0.1, 0.1, (int(dull.sum()), 3)), 0, 1)
    shade = 1.0 + rng.normal(0, 0.03, (n, 1, s, s)).astype(f32)
    return np.where(mask[:, None], colour[:, :, None, None] * shade, img), mask


def _marked(rng, label, split: str, shortcut: bool):
    """Which images carry the watermark (always drawn from the same random stream)."""
    coin = rng.uniform(0, 1, len(label))
    if not shortcut:
        return np.zeros(len(label), dtype=bool)
    if split == "test":
        return coin < TEST_MARK_RATE
    return (label == CLASSES.index(SHORTCUT_CLASS)) & (coin < SHORTCUT_RATE)


def _draw_chunk(rng: np.random.Generator, size: int, split: str, shortcut: bool):
    n, s = CHUNK, size
    yy, xx = np.mgrid[:s, :s].astype(np.float32) + 0.5
    label = rng.integers(0, len(CLASSES), n)
    img, base = _background(rng, n, s, xx, yy)
    img = _strokes(rng, img, n, s, xx, yy)
    img, mask = _object(rng, img, base, label, s, xx, yy)
    marked = _marked(rng, label, split, shortcut)
    wm, wm_rgb = _watermark(s)
    img = np.where(marked[:, None, None, None] & wm, wm_rgb, img)
    mask &= ~(marked[:, None, None] & wm)
    img = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return img, label.astype(np.int64), mask, marked


class ShapesDataset(Dataset):
    """``ds[i] -> (image FloatTensor[3,H,W] in [0,1], label int)``; see ``ground_truth``."""

    classes = CLASSES

    def __init__(self, split: str = "train", n: int = 1000, seed: int = 0, size: int = 64,
                 shortcut: bool = False, watermark: str | None = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        if n < 1:
            raise ValueError(f"n must be a positive number of images, got {n}")
        if size < 16:
            raise ValueError(f"size must be at least 16 pixels, got {size}")
        if watermark not in (None, "all", "none"):
            raise ValueError("watermark must be None (the split's rule), 'all' or 'none'")
        self.split, self.n, self.seed, self.size, self.shortcut = split, n, seed, size, shortcut
        chunks = []
        for c in range(-(-n // CHUNK)):
            seq = np.random.SeedSequence([seed, SPLITS[split], int(shortcut), c, size])
            chunks.append(_draw_chunk(np.random.default_rng(seq), size, split, shortcut))
        img, label, mask, marked = (np.concatenate(p)[:n] for p in zip(*chunks))
        if watermark is not None:   # redraw the corner: every image marked, or none
            wm, wm_rgb = _watermark(size)
            if watermark == "all":
                img = np.where(wm, (wm_rgb * 255 + 0.5).astype(np.uint8), img)
                mask &= ~wm
                marked = np.ones(n, dtype=bool)
            else:
                plain = _plain_corner(seed, split, size, n, shortcut)
                img = np.where(marked[:, None, None, None] & wm, plain, img)
                marked = np.zeros(n, dtype=bool)
        self._images = torch.from_numpy(np.ascontiguousarray(img))
        self.labels = torch.from_numpy(label)
        self._masks = torch.from_numpy(mask)
        self.watermarked = torch.from_numpy(marked)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self._images[i].float() / 255.0, int(self.labels[i])

    def images(self, index=slice(None)) -> torch.Tensor:
        """A batch of images as FloatTensor[N,3,H,W] in [0,1] (index: slice, list or tensor)."""
        return self._images[index].float() / 255.0

    def ground_truth(self, i: int) -> dict:
        """``dict(mask=BoolTensor[H,W], bbox=(x0, y0, x1, y1), label=int, watermark=...)``.

        The box is in pixels with exclusive ends, so ``mask[y0:y1, x0:x1]`` holds the
        object. ``watermark`` is the watermark's BoolTensor[H,W] mask, all False when
        the image carries none.
        """
        mask = self._masks[i].clone()
        ys, xs = torch.nonzero(mask, as_tuple=True)
        bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        wm = torch.from_numpy(_watermark(self.size)[0]) & bool(self.watermarked[i])
        return dict(mask=mask, bbox=bbox, label=int(self.labels[i]), watermark=wm)

    def masks(self, index=slice(None)) -> torch.Tensor:
        """Object masks as BoolTensor[N,H,W]."""
        return self._masks[index].clone()

    def __repr__(self) -> str:
        return (f"ShapesDataset(split={self.split!r}, n={self.n}, seed={self.seed}, size={self.size}, "
                f"shortcut={self.shortcut}, watermarked={int(self.watermarked.sum())})")


def _plain_corner(seed, split, size, n, shortcut):
    """The same images drawn without watermark (for watermark='none')."""
    chunks = []
    for c in range(-(-n // CHUNK)):
        seq = np.random.SeedSequence([seed, SPLITS[split], int(shortcut), c, size])
        chunks.append(_draw_chunk(np.random.default_rng(seq), size, split, False)[0])
    return np.concatenate(chunks)[:n]


def shapes(split: str = "train", n: int = 1000, seed: int = 0, size: int = 64,
           shortcut: bool = False, watermark: str | None = None) -> ShapesDataset:
    """The shapes dataset (see the module docstring). ``watermark`` overrides the
    split's rule: ``"all"`` marks every image, ``"none"`` removes every mark."""
    return ShapesDataset(split, n, seed, size, shortcut, watermark)
