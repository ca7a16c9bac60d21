"""The Broden format (Bau et al. 2017) and a synthetic concept dataset written in it.

A Broden folder holds::

    index.csv        image,split,ih,iw,sh,sw,<one column per category>
    category.csv     name,first,last,count,frequency   (row order = category order)
    label.csv        number,name,category,frequency,coverage,syns   (0 = unlabeled, no row)
    c_<category>.csv code,number,name,frequency,coverage
    images/          the JPEG images and the RGB segmentation PNGs

An index cell is empty, or a ``;``-separated list of PNG file names (pixel labels,
label = R + 256 * G, blue unused, 0 = unlabeled, at the segmentation size
``sh x sw``) or of integers (labels that hold for the whole image). Paths are
relative to ``images/``. Each label is scored in its *primary* category, the one in
whose ``c_<category>.csv`` its coverage is largest.

``open(folder)`` reads a folder (the real broden1_224 too), ``write(...)`` writes
one, ``make_synthetic(folder, n, seed)`` draws a concept dataset with the shapes
generator: pixel-labelled ``color`` (the 11 Broden colour names), ``object`` (the
shapes), ``part`` (tip, rim, center of a shape), ``texture`` (striped, dotted, ...)
and a whole-image ``scene`` (the background layout).
"""
from __future__ import annotations

import builtins
import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .shapes import CLASSES, _inside

__all__ = ["Broden", "BrodenFormatError", "open", "write", "make_synthetic", "Batch",
           "COLORS", "PARTS", "TEXTURES", "SCENES"]

INDEX_FIXED = ["image", "split", "ih", "iw", "sh", "sw"]


class BrodenFormatError(ValueError):
    """A Broden folder that does not follow the format (the message names file and row)."""


# ----------------------------------------------------------------------------- reading

@dataclass
class Batch:
    """A batch from ``Broden.batches``.

    ``images`` FloatTensor[B,3,ih,iw] in [0,1]; ``pixels`` LongTensor[B,K,sh,sw], every
    segmentation PNG of every category (0-padded to the batch's largest K);
    ``whole`` LongTensor[B,J], whole-image label numbers (0-padded); ``labelled``
    BoolTensor[B,C], whether category c has any data for the image; ``index`` the
    dataset rows.
    """
    images: torch.Tensor
    pixels: torch.Tensor
    whole: torch.Tensor
    labelled: torch.Tensor
    index: list


def _read_csv(path: Path) -> list[dict]:
    if not path.exists():
        raise BrodenFormatError(f"{path} is missing: a Broden folder needs index.csv, category.csv, "
                                "label.csv and one c_<category>.csv per category")
    with builtins.open(path, newline="") as f:
        return list(csv.DictReader(f))


def _need(path: Path, rows: list[dict], columns: list[str]):
    have = list(rows[0].keys()) if rows else []
    missing = [c for c in columns if c not in have]
    if missing or not rows:
        raise BrodenFormatError(f"{path}: missing column(s) {missing} (has {have})" if missing
                                else f"{path} has no rows")


def _int(path: Path, row: int, column: str, value: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BrodenFormatError(f"{path}, row {row}: column {column!r} must be an integer, "
                                f"got {value!r}") from None


def _float(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


class Broden:
    """A Broden-format folder (see the module docstring); ``open(folder)`` makes one.

    ``categories`` (category order), ``label_names[number]`` (``[0]`` is
    ``"-"``, unlabeled), ``label_category[number]`` (primary category index, -1 for
    0), ``rows`` (the parsed index). ``image(i)``, ``segmentation(i)`` and
    ``batches(batch_size)`` read the files; a file that is missing, has the wrong
    size or holds unknown label numbers raises ``BrodenFormatError`` naming it and
    its index.csv row.
    """

    def __init__(self, folder):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise BrodenFormatError(f"{self.folder} is not a folder; make one with "
                                    "xailab.data.broden.make_synthetic(folder, n)")
        self.images_dir = self.folder / "images"
        # categories
        path = self.folder / "category.csv"
        cats = _read_csv(path)
        _need(path, cats, ["name", "first", "last", "count", "frequency"])
        self.categories = [r["name"] for r in cats]
        self.category_table = cats
        # labels
        path = self.folder / "label.csv"
        labels = _read_csv(path)
        _need(path, labels, ["number", "name", "category", "frequency", "coverage"])
        numbers = [_int(path, i + 2, "number", r["number"]) for i, r in enumerate(labels)]
        for i, n in enumerate(numbers):
            if n < 0:
                raise BrodenFormatError(f"{path}, row {i + 2}: label number {n} must be >= 1 "
                                        "(0 is 'unlabeled')")
        self.n_labels = max(numbers)
        self.label_names = ["-"] * (self.n_labels + 1)
        self.label_table = {}
        for i, (n, r) in enumerate(zip(numbers, labels)):
            if n == 0:                   # an explicit 'unlabeled' row: tolerated, not a label
                continue
            if n in self.label_table:
                raise BrodenFormatError(f"{path}, row {i + 2}: label number {n} appears twice")
            self.label_names[n] = r["name"]
            self.label_table[n] = r
        # per-category label lists; primary category = largest coverage
        cover = np.full((len(self.categories), self.n_labels + 1), -1.0)
        self.category_labels = {}
        for c, cat in enumerate(self.categories):
            path = self.folder / f"c_{cat}.csv"
            rows = _read_csv(path)
            if rows:
                _need(path, rows, ["code", "number", "name", "frequency", "coverage"])
            nums = []
            for i, r in enumerate(rows):
                n = _int(path, i + 2, "number", r["number"])
                if n == 0:
                    continue
                if n not in self.label_table:
                    raise BrodenFormatError(f"{path}, row {i + 2}: label number {n} is not in label.csv")
                cover[c, n] = _float(r["coverage"])
                nums.append(n)
            self.category_labels[cat] = nums
        self.label_category = torch.full((self.n_labels + 1,), -1, dtype=torch.long)
        for n in self.label_table:
            if cover[:, n].max() >= 0:
                self.label_category[n] = int(np.argmax(cover[:, n]))
        # index
        path = self.folder / "index.csv"
        raw = _read_csv(path)
        _need(path, raw, INDEX_FIXED)
        self.rows = []
        for i, r in enumerate(raw):
            row = {"image": r["image"], "split": r["split"]}
            for k in ("ih", "iw", "sh", "sw"):
                row[k] = _int(path, i + 2, k, r[k])
            for cat in self.categories:
                items = [s for s in (r.get(cat) or "").split(";") if s]
                parsed = []
                for s in items:
                    if re.fullmatch(r"\d+", s):
                        n = int(s)
                        if n not in self.label_table:
                            raise BrodenFormatError(
                                f"{path}, row {i + 2} (image {r['image']!r}): whole-image label {n} in "
                                f"column {cat!r} is not in label.csv")
                        parsed.append(n)
                    else:
                        parsed.append(s)
                row[cat] = parsed
            self.rows.append(row)

    # ---- small helpers
    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return (f"Broden({str(self.folder)!r}: {len(self)} images, {self.n_labels} labels in "
                f"{len(self.categories)} categories {self.categories})")

    def _where(self, i: int) -> str:
        return f"{self.folder / 'index.csv'}, row {i + 2} (image {self.rows[i]['image']!r})"

    def category_of(self, label: int) -> str:
        """Name of the primary category of label ``number``."""
        return self.categories[int(self.label_category[label])]

    # ---- files
    def _file(self, i: int, name: str) -> Path:
        """``images/name``, refusing names that lead outside the dataset folder (``..``,
        absolute paths, links out), as a reader of downloaded data must."""
        path = self.images_dir / name
        root = self.folder.resolve()
        if not path.resolve().is_relative_to(root):
            raise BrodenFormatError(f"{self._where(i)}: file name {name!r} points outside the dataset "
                                    f"folder {root}; a Broden index may only name files inside it")
        return path

    def image(self, i: int) -> torch.Tensor:
        """Image ``i`` as FloatTensor[3, ih, iw] in [0, 1]."""
        from PIL import Image

        row = self.rows[i]
        path = self._file(i, row["image"])
        if not path.exists():
            raise BrodenFormatError(f"{self._where(i)}: image file {path} is missing")
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
        if arr.shape[:2] != (row["ih"], row["iw"]):
            raise BrodenFormatError(f"{self._where(i)}: {path} is {arr.shape[0]}x{arr.shape[1]}, "
                                    f"index.csv says ih x iw = {row['ih']}x{row['iw']}")
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0

    def _png(self, i: int, name: str) -> np.ndarray:
        from PIL import Image

        row = self.rows[i]
        path = self._file(i, name)
        if not path.exists():
            raise BrodenFormatError(f"{self._where(i)}: segmentation file {path} is missing")
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB")).astype(np.int64)
        if arr.shape[:2] != (row["sh"], row["sw"]):
            raise BrodenFormatError(f"{self._where(i)}: {path} is {arr.shape[0]}x{arr.shape[1]}, "
                                    f"index.csv says sh x sw = {row['sh']}x{row['sw']}")
        lab = arr[..., 0] + 256 * arr[..., 1]
        bad = np.unique(lab[(lab > self.n_labels) | (lab < 0)])
        if bad.size == 0:
            present = np.unique(lab)
            bad = np.array([n for n in present if n and n not in self.label_table])
        if bad.size:
            raise BrodenFormatError(f"{self._where(i)}: {path} holds label number(s) "
                                    f"{bad[:5].tolist()} that label.csv does not define")
        return lab

    def segmentation(self, i: int) -> dict:
        """``{category: list}`` for image ``i``: LongTensor[sh, sw] label maps for PNG
        entries, ints for whole-image labels; empty list when not labelled."""
        row = self.rows[i]
        return {cat: [x if isinstance(x, int) else torch.from_numpy(self._png(i, x)) for x in row[cat]]
                for cat in self.categories}

    def batches(self, batch_size: int = 64, indices=None, images: bool = True, segmentations: bool = True):
        """Yield ``Batch`` objects over ``indices`` (default: all rows, in order).

        A batch never mixes image or segmentation sizes (it ends early instead), so
        its images stack into one tensor at their stored size. ``images=False``
        skips reading the JPEGs (``Batch.images`` is then None), ``segmentations=False``
        the PNGs (``pixels`` is then empty, ``whole`` and ``labelled`` still filled).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        idx = list(range(len(self))) if indices is None else [int(i) for i in indices]
        group: list[int] = []
        for i in idx:
            r = self.rows[i]
            if group:
                g = self.rows[group[0]]
                if len(group) == batch_size or (r["ih"], r["iw"], r["sh"], r["sw"]) != \
                        (g["ih"], g["iw"], g["sh"], g["sw"]):
                    yield self._batch(group, images, segmentations)
                    group = []
            group.append(i)
        if group:
            yield self._batch(group, images, segmentations)

    def _batch(self, group: list[int], images: bool = True, segmentations: bool = True) -> Batch:
        images = torch.stack([self.image(i) for i in group]) if images else None
        sh, sw = self.rows[group[0]]["sh"], self.rows[group[0]]["sw"]
        maps, whole = [], []
        labelled = torch.zeros(len(group), len(self.categories), dtype=torch.bool)
        for b, i in enumerate(group):
            m, w = [], []
            for c, cat in enumerate(self.categories):
                items = self.rows[i][cat]
                labelled[b, c] = bool(items)
                for x in items:
                    if isinstance(x, int):
                        w.append(x)
                    elif segmentations:
                        m.append(self._png(i, x))
            maps.append(m)
            whole.append(w)
        k = max(1, max(len(m) for m in maps)) if segmentations else 0
        j = max(1, max(len(w) for w in whole))
        pixels = torch.zeros(len(group), k, sh, sw, dtype=torch.long)
        wl = torch.zeros(len(group), j, dtype=torch.long)
        for b, (m, w) in enumerate(zip(maps, whole)):
            for q, arr in enumerate(m):
                pixels[b, q] = torch.from_numpy(arr)
            wl[b, :len(w)] = torch.tensor(w, dtype=torch.long)
        return Batch(images, pixels, wl, labelled, list(group))


def open(folder) -> Broden:  # noqa: A001 - the issue's interface name
    """Read the Broden-format folder ``folder`` (see ``Broden``)."""
    return Broden(folder)


# ----------------------------------------------------------------------------- writing

def _save_png(path: Path, lab: np.ndarray):
    from PIL import Image

    lab = np.asarray(lab, dtype=np.int64)
    if lab.min() < 0 or lab.max() >= 65536:
        raise ValueError(f"label numbers must be in 0..65535 for {path.name}")
    rgb = np.zeros(lab.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = lab % 256
    rgb[..., 1] = lab // 256
    Image.fromarray(rgb, "RGB").save(path, optimize=False, compress_level=1)


def write(folder, categories: list[str], labels: list[tuple[str, str]], records, quality: int = 95) -> Path:
    """Write a Broden-format folder.

    ``categories``: names in order. ``labels``: ``(name, category)`` pairs; label
    number k + 1 is ``labels[k]``. ``records``: an iterable of dicts with ``image``
    (uint8 array [ih, iw, 3]), optional ``split`` (default ``"train"``), optional
    ``name`` (file stem, default ``synthetic_<i>``) and, per category, a list whose
    items are int arrays [sh, sw] of label numbers (pixel labels, one PNG each) or
    ints (whole-image labels). Images are saved as JPEG (lossy, fine for images),
    segmentations as lossless PNG. Frequencies and coverages are computed from the
    data (frequency: images in which a label appears; coverage: the area it covers,
    in units of whole images, as NetDissect reads it); a label is listed in
    ``c_<category>.csv`` for its own category and for every other category whose
    data use it. Returns the folder.
    """
    from PIL import Image

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    ncat, nlab = len(categories), len(labels)
    cat_index = {c: i for i, c in enumerate(categories)}
    for name, cat in labels:
        if cat not in cat_index:
            raise ValueError(f"label {name!r} has category {cat!r}, which is not in {categories}")
    freq = np.zeros((ncat, nlab + 1))        # images in which label appears, per category
    cover = np.zeros((ncat, nlab + 1))       # covered area in whole images, per category
    cat_freq = np.zeros(ncat)
    rows = []
    for i, rec in enumerate(records):
        unknown = set(rec) - {"image", "split", "name"} - set(categories)
        if unknown:
            raise ValueError(f"record {i}: keys {sorted(unknown)} are neither image, split, name "
                             f"nor one of the categories {categories}")
        img = np.asarray(rec["image"])
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"record {i}: image must be a uint8 array [H, W, 3]")
        stem = rec.get("name", f"synthetic_{i:06d}")
        ih, iw = img.shape[:2]
        Image.fromarray(img, "RGB").save(folder / "images" / f"{stem}.jpg", quality=quality, subsampling=0)
        sh = sw = None
        row = {"image": f"{stem}.jpg", "split": rec.get("split", "train"), "ih": ih, "iw": iw}
        for c, cat in enumerate(categories):
            cells = []
            for q, item in enumerate(rec.get(cat, []) or []):
                if isinstance(item, (int, np.integer)):
                    n = int(item)
                    if not 1 <= n <= nlab:
                        raise ValueError(f"record {i}: whole-image label {n} out of 1..{nlab}")
                    cells.append(str(n))
                    freq[c, n] += 1
                    cover[c, n] += 1.0
                else:
                    lab = np.asarray(item)
                    if sh is None:
                        sh, sw = lab.shape
                    elif lab.shape != (sh, sw):
                        raise ValueError(f"record {i}: segmentations of one image must share a size")
                    if lab.max() > nlab or lab.min() < 0:
                        raise ValueError(f"record {i}: label number {int(lab.max())} out of 0..{nlab}")
                    name = f"{stem}_{cat}" + (f"_{q}" if q else "") + ".png"
                    _save_png(folder / "images" / name, lab)
                    cells.append(name)
                    counts = np.bincount(lab.ravel(), minlength=nlab + 1)
                    seen = counts > 0
                    seen[0] = False
                    freq[c, seen] += 1
                    cover[c, seen] += counts[seen] / lab.size
            if cells:
                cat_freq[c] += 1
            row[cat] = ";".join(cells)
        row["sh"], row["sw"] = (sh, sw) if sh is not None else (ih // 2, iw // 2)
        rows.append(row)

    def dump(name, header, table):
        with builtins.open(folder / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(table)

    dump("index.csv", INDEX_FIXED + list(categories),
         [[r["image"], r["split"], r["ih"], r["iw"], r["sh"], r["sw"]] + [r[c] for c in categories]
          for r in rows])
    cat_rows = []
    for c, cat in enumerate(categories):
        nums = [k + 1 for k, (_, lc) in enumerate(labels) if lc == cat or freq[c, k + 1] > 0]
        cat_rows.append([cat, min(nums, default=0), max(nums, default=0), len(nums), int(cat_freq[c])])
        dump(f"c_{cat}.csv", ["code", "number", "name", "frequency", "coverage"],
             [[code + 1, n, labels[n - 1][0], int(freq[c, n]), f"{cover[c, n]:.6f}"]
              for code, n in enumerate(nums)])
    dump("category.csv", ["name", "first", "last", "count", "frequency"], cat_rows)
    dump("label.csv", ["number", "name", "category", "frequency", "coverage", "syns"],
         [[k + 1, name, ";".join(f"{categories[c]}({int(freq[c, k + 1])})" for c in range(ncat)
                                 if freq[c, k + 1] > 0 or categories[c] == cat),
           int(freq[:, k + 1].sum()), f"{cover[:, k + 1].sum():.6f}", name]
          for k, (name, cat) in enumerate(labels)])
    return folder


# ----------------------------------------------------------------------------- synthetic data

COLORS = {  # the 11 Broden colour names and a typical RGB value
    "black-c": (0.08, 0.08, 0.08), "blue-c": (0.12, 0.25, 0.85), "brown-c": (0.5, 0.3, 0.12),
    "green-c": (0.15, 0.65, 0.2), "grey-c": (0.5, 0.5, 0.5), "orange-c": (1.0, 0.55, 0.05),
    "pink-c": (1.0, 0.6, 0.78), "purple-c": (0.5, 0.15, 0.62), "red-c": (0.85, 0.1, 0.1),
    "white-c": (0.95, 0.95, 0.95), "yellow-c": (0.95, 0.9, 0.12)}
PARTS = ["tip", "rim", "center"]
TEXTURES = ["striped", "dotted", "chequered", "zigzagged", "blotchy"]
SCENES = {  # whole-image background: (sky colours, ground colours)
    "beach": (["blue-c", "white-c"], ["yellow-c", "orange-c"]),
    "forest": (["green-c", "white-c"], ["brown-c", "green-c"]),
    "night": (["black-c", "purple-c"], ["grey-c", "black-c"]),
    "snowfield": (["white-c", "grey-c"], ["white-c", "blue-c"]),
    "desert": (["orange-c", "yellow-c"], ["brown-c", "orange-c"]),
    "city": (["grey-c", "blue-c"], ["grey-c", "black-c"])}
CATEGORIES = ["color", "object", "part", "scene", "texture"]
CHUNK = 64


def synthetic_labels() -> list[tuple[str, str]]:
    """``(name, category)`` of every label of the synthetic dataset, number = position + 1."""
    return ([(c, "color") for c in COLORS] + [(o, "object") for o in CLASSES]
            + [(p, "part") for p in PARTS] + [(s, "scene") for s in SCENES]
            + [(t, "texture") for t in TEXTURES])


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


def _draw(rng: np.random.Generator, n: int, size: int):
    """n images of ``size`` and their label maps at ``size // 2`` (all numpy)."""
    labels = synthetic_labels()
    num = {name: k + 1 for k, (name, _) in enumerate(labels)}
    palette = np.array(list(COLORS.values()), dtype=np.float32)
    color_num = np.array([num[c] for c in COLORS])
    scene_names = list(SCENES)
    f32 = np.float32

    # per-image parameters
    scene = rng.integers(0, len(scene_names), n)
    horizon = rng.uniform(0.35, 0.75, n) * size
    sky = np.array([[list(COLORS).index(c) for c in SCENES[s][0]] for s in scene_names])
    ground = np.array([[list(COLORS).index(c) for c in SCENES[s][1]] for s in scene_names])
    sky_pick = rng.integers(0, 2, n)
    ground_pick = rng.integers(0, 2, n)
    bg_textured = rng.uniform(0, 1, n) < 0.3          # the ground half carries a texture
    bg_tex = rng.integers(0, len(TEXTURES), n)
    shape = rng.integers(0, len(CLASSES), n)
    radius = rng.uniform(0.2, 0.32, n) * size
    cx = rng.uniform(0, 1, n) * (size - 2 * radius) + radius
    cy = rng.uniform(0, 1, n) * (size - 2 * radius) + radius
    rot = rng.uniform(0, 2 * np.pi, n)
    obj_col = rng.integers(0, len(COLORS), n)
    obj_col2 = (obj_col + rng.integers(1, len(COLORS), n)) % len(COLORS)
    obj_textured = rng.uniform(0, 1, n) < 0.6
    obj_tex = rng.integers(0, len(TEXTURES), n)
    tex_params = [dict(period=rng.uniform(0.07, 0.12, (n, 1, 1)) * size,
                       angle=rng.uniform(0, np.pi, (n, 1, 1)),
                       phase=rng.uniform(0, 1, (n, 1, 1)),
                       waves=np.concatenate([rng.normal(0, 1.2, (n, 3, 2)),
                                             rng.uniform(0, 2 * np.pi, (n, 3, 1))], 2))
                  for _ in range(2)]
    tint = rng.normal(0, 0.04, (n, 3)).astype(f32)
    ex = lambda a: a[:, None, None]  # noqa: E731

    def maps(step: float, side: int):
        """All label maps on a grid of ``side`` pixels spaced ``step`` image pixels."""
        g = (np.arange(side, dtype=f32) + 0.5) * step
        y, x = np.meshgrid(g, g, indexing="ij")
        x, y = np.broadcast_to(x, (n, side, side)), np.broadcast_to(y, (n, side, side))
        # background: sky above the horizon, ground below, each of one scene colour
        below = y > ex(horizon)
        col = np.where(below, ex(ground[scene, ground_pick]), ex(sky[scene, sky_pick]))
        other = np.where(below, ex(ground[scene, 1 - ground_pick]), ex(sky[scene, 1 - sky_pick]))
        tex = np.zeros((n, side, side), dtype=np.int64)
        for k, kind in enumerate(TEXTURES):
            sel = bg_textured & (bg_tex == k)
            if sel.any():
                on = _pattern(kind, x[sel], y[sel], **{p: v[sel] for p, v in tex_params[0].items()})
                region = below[sel]
                col[sel] = np.where(region & on, other[sel], col[sel])
                tex[sel] = np.where(region, num[kind], 0)
        # the object
        dx, dy = x - ex(cx), y - ex(cy)
        c, s = np.cos(ex(rot)), np.sin(ex(rot))
        u, v = (c * dx + s * dy) / ex(radius), (-s * dx + c * dy) / ex(radius)
        lab = np.broadcast_to(ex(shape), u.shape)
        rho = np.sqrt(u * u + v * v)
        inside = _inside(lab, u, v)
        core = _inside(lab, u / 0.6, v / 0.6)
        tip_r = np.array([9.0, 0.9, 0.7, 0.62, 0.7, 9.0])[lab]       # circle, heart have no tips
        part = np.where(inside & (rho > tip_r), num["tip"],
                        np.where(inside & ~core, num["rim"],
                                 np.where(inside & (rho < 0.3), num["center"], 0)))
        ocol = np.broadcast_to(ex(obj_col), u.shape).copy()
        for k, kind in enumerate(TEXTURES):
            sel = obj_textured & (obj_tex == k)
            if sel.any():
                on = _pattern(kind, x[sel], y[sel], **{p: v[sel] for p, v in tex_params[1].items()})
                ocol[sel] = np.where(on, ex(obj_col2[sel]), ocol[sel])
        col = np.where(inside, ocol, col)
        otex = np.where(ex(obj_textured), num[TEXTURES[0]] + ex(obj_tex), 0)
        tex = np.where(inside, otex, tex)
        obj = np.where(inside, num[CLASSES[0]] + lab, 0)
        return col, obj, part, tex

    col, _, _, _ = maps(1.0, size)
    img = palette[col] + tint[:, None, None, :]
    img += rng.normal(0, 0.03, img.shape).astype(f32)
    img = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    col, obj, part, tex = maps(2.0, size // 2)
    return img, color_num[col], obj, part, tex, np.array([num[scene_names[s]] for s in scene])


def make_synthetic(folder, n: int, seed: int = 0, size: int = 128) -> Path:
    """Write ``n`` synthetic concept images (``size`` x ``size``, segmentations at half
    size) into ``folder`` in the Broden format; deterministic from ``seed``.

    Categories: ``color`` (pixel, 11 Broden colour names), ``object`` (pixel, the
    shapes), ``part`` (pixel: a shape's ``tip``, ``rim``, ``center``), ``texture``
    (pixel: on textured objects and textured ground), ``scene`` (whole image: the
    background). Image i is the same whatever ``n`` (drawn in chunks of 64).
    """
    if n < 1:
        raise ValueError(f"n must be a positive number of images, got {n}")
    if size < 16 or size % 2:
        raise ValueError(f"size must be an even number of pixels >= 16, got {size}")

    def records():
        for c in range(-(-n // CHUNK)):
            rng = np.random.default_rng(np.random.SeedSequence([seed, c, size, 6]))
            img, col, obj, part, tex, scene = _draw(rng, CHUNK, size)
            for j in range(min(CHUNK, n - c * CHUNK)):
                i = c * CHUNK + j
                rec = {"image": img[j], "name": f"synthetic_{i:06d}",
                       "split": "train" if i % 5 else "val",
                       "color": [col[j]], "object": [obj[j]] if obj[j].any() else [],
                       "part": [part[j]] if part[j].any() else [], "scene": [int(scene[j])],
                       "texture": [tex[j]] if tex[j].any() else []}
                yield rec

    return write(folder, CATEGORIES, synthetic_labels(), records())
