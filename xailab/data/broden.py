"""The Broden format (Bau et al. 2017): a reader and a writer.

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

``open(folder)`` (also called ``read``) reads a folder (the real broden1_224 too),
``write(...)`` (from ``xailab.data.broden_writer``) writes one, and ``make_synthetic(folder, n, seed)`` (from
``xailab.data.synthetic_broden``) draws a concept dataset with the shapes generator:
pixel-labelled ``color`` (the 11 Broden colour names), ``object`` (the shapes),
``part`` (tip, rim, center of a shape), ``texture`` (striped, dotted, ...),
``material`` (wood grain, noise) and a whole-image ``scene`` (the background layout);
colour, texture and material are drawn independently of the shape.
"""
from __future__ import annotations

import builtins
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..runtime import positive_int
from .broden_writer import INDEX_FIXED, write
from .synthetic_broden import (CATEGORIES, CHUNK, COLORS, MATERIALS, PARTS, SCENES, TEXTURES,  # noqa: F401
                               make_synthetic, synthetic_labels)

__all__ = ["Broden", "BrodenFormatError", "open", "read", "write", "make_synthetic", "Batch",
           "COLORS", "PARTS", "TEXTURES", "MATERIALS", "SCENES"]

SIZES = ["ih", "iw", "sh", "sw"]


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


def _read_csv(path: Path, columns: list[str], may_be_empty: bool = False) -> list[dict]:
    """The rows of a CSV file as dicts of strings, after checking it has ``columns``."""
    if not path.exists():
        raise BrodenFormatError(f"{path} is missing: a Broden folder needs index.csv, category.csv, "
                                "label.csv and one c_<category>.csv per category")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False)
    except pd.errors.EmptyDataError:
        table = pd.DataFrame()
    except pd.errors.ParserError as e:
        raise BrodenFormatError(f"{path}: {e}") from None
    if table.empty and may_be_empty:
        return []
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise BrodenFormatError(f"{path}: missing column(s) {missing} (has {list(table.columns)})")
    if table.empty:
        raise BrodenFormatError(f"{path} has no rows")
    return table.to_dict("records")


def _ints(path: Path, rows: list[dict], column: str) -> list[int]:
    """``column`` of every row as ints; a bad value is named with its row (row 1 is the header)."""
    out = []
    for row, r in enumerate(rows, start=2):
        try:
            out.append(int(r[column]))
        except ValueError:
            raise BrodenFormatError(f"{path}, row {row}: column {column!r} must be an integer, "
                                    f"got {r[column]!r}") from None
    return out


def _float(value: str) -> float:
    """A coverage value; an unreadable one counts as 0."""
    try:
        return float(value)
    except ValueError:
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
        self._inside = self.images_dir.resolve().is_relative_to(self.folder.resolve())
        self.category_table = _read_csv(self.folder / "category.csv", ["name", "first", "last", "count", "frequency"])
        self.categories = [r["name"] for r in self.category_table]
        self._read_labels()
        self._read_primary_categories()
        self._read_index()

    def _read_labels(self):
        """``label_names``, ``label_table`` (number -> label.csv row) and ``n_labels``."""
        path = self.folder / "label.csv"
        labels = _read_csv(path, ["number", "name", "category", "frequency", "coverage"])
        numbers = _ints(path, labels, "number")
        self.n_labels = max(numbers)
        self.label_names = ["-"] * (self.n_labels + 1)
        self.label_table = {}
        for row, (n, r) in enumerate(zip(numbers, labels), start=2):
            if n < 0:
                raise BrodenFormatError(f"{path}, row {row}: label number {n} must be >= 1 (0 is 'unlabeled')")
            if n == 0:                   # an explicit 'unlabeled' row: tolerated, not a label
                continue
            if n in self.label_table:
                raise BrodenFormatError(f"{path}, row {row}: label number {n} appears twice")
            self.label_names[n] = r["name"]
            self.label_table[n] = r
        self._known = torch.zeros(self.n_labels + 1, dtype=torch.bool)     # label number -> defined (0 too)
        self._known[[0, *self.label_table]] = True

    def _read_primary_categories(self):
        """``category_labels`` (category -> its label numbers) and ``label_category``:
        each label's primary category, the one whose c_<category>.csv gives it the
        largest coverage."""
        cover = np.full((len(self.categories), self.n_labels + 1), -1.0)
        self.category_labels = {}
        for c, cat in enumerate(self.categories):
            path = self.folder / f"c_{cat}.csv"
            rows = _read_csv(path, ["code", "number", "name", "frequency", "coverage"], may_be_empty=True)
            numbers = _ints(path, rows, "number")
            for row, n in enumerate(numbers, start=2):
                if n != 0 and n not in self.label_table:
                    raise BrodenFormatError(f"{path}, row {row}: label number {n} is not in label.csv")
            for n, r in zip(numbers, rows):
                if n != 0:
                    cover[c, n] = _float(r["coverage"])
            self.category_labels[cat] = [n for n in numbers if n != 0]
        self.label_category = torch.full((self.n_labels + 1,), -1, dtype=torch.long)
        for n in self.label_table:
            if cover[:, n].max() >= 0:
                self.label_category[n] = int(np.argmax(cover[:, n]))

    def _read_index(self):
        """``rows``: per image its file, split, sizes and, per category, a list of PNG
        names (str) and whole-image label numbers (int)."""
        path = self.folder / "index.csv"
        raw = _read_csv(path, INDEX_FIXED)
        sizes = {k: _ints(path, raw, k) for k in SIZES}
        self.rows = []
        for i, r in enumerate(raw):
            row = {"image": r["image"], "split": r["split"], **{k: sizes[k][i] for k in SIZES}}
            for cat in self.categories:
                row[cat] = [self._index_item(path, i, r, cat, s) for s in (r.get(cat) or "").split(";") if s]
            self.rows.append(row)

    def _index_item(self, path: Path, i: int, r: dict, cat: str, item: str):
        """One entry of an index cell: a whole-image label number (int) or a PNG name."""
        if not re.fullmatch(r"\d+", item):
            return item
        n = int(item)
        if n not in self.label_table:
            raise BrodenFormatError(f"{path}, row {i + 2} (image {r['image']!r}): whole-image label {n} in "
                                    f"column {cat!r} is not in label.csv")
        return n

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
        plain = self._inside and "/" not in name and "\\" not in name and name not in (".", "..")
        if plain and not path.is_symlink():            # a plain file name in images/: no need to resolve
            return path
        root = self.folder.resolve()
        if not path.resolve().is_relative_to(root):
            raise BrodenFormatError(f"{self._where(i)}: file name {name!r} points outside the dataset "
                                    f"folder {root}; a Broden index may only name files inside it")
        return path

    def _rgb(self, i: int, name: str, what: str, size: tuple[int, int]) -> torch.Tensor:
        """The RGB pixels ByteTensor[3, H, W] of file ``name`` of row ``i``, checked against ``size``."""
        from torchvision.io import ImageReadMode, decode_image

        path = self._file(i, name)
        try:
            with builtins.open(path, "rb") as f:
                data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
        except FileNotFoundError:
            raise BrodenFormatError(f"{self._where(i)}: {what} file {path} is missing") from None
        try:
            rgb = decode_image(data, mode=ImageReadMode.RGB)
        except RuntimeError as e:
            raise BrodenFormatError(f"{self._where(i)}: {what} file {path} is not a readable image ({e})") from None
        if rgb.shape[1] != size[0] or rgb.shape[2] != size[1]:
            dims = "ih x iw" if what == "image" else "sh x sw"
            raise BrodenFormatError(f"{self._where(i)}: {path} is {rgb.shape[1]}x{rgb.shape[2]}, "
                                    f"index.csv says {dims} = {size[0]}x{size[1]}")
        return rgb

    def image(self, i: int) -> torch.Tensor:
        """Image ``i`` as FloatTensor[3, ih, iw] in [0, 1]."""
        row = self.rows[i]
        return self._rgb(i, row["image"], "image", (row["ih"], row["iw"])).float() / 255.0

    def _png(self, i: int, name: str) -> np.ndarray:
        """Label numbers [sh, sw] (R + 256 G) of segmentation ``name`` of row ``i``."""
        row = self.rows[i]
        rgb = self._rgb(i, name, "segmentation", (row["sh"], row["sw"]))
        return self._label_numbers(rgb[None, :2], [(i, name)])[0].numpy()

    def _label_numbers(self, red_green: torch.Tensor, files: list) -> torch.Tensor:
        """R + 256 G of segmentations ByteTensor[M, 2, sh, sw] as LongTensor[M, sh, sw];
        a BrodenFormatError names the first file (``files[m]`` = (row, name)) that holds
        a number label.csv does not define."""
        lab = red_green[:, 0].long() + 256 * red_green[:, 1].long()
        bad = (lab > self.n_labels) | ~self._known[lab.clamp_max(self.n_labels)]
        if bad.any():
            m = int(bad.flatten(1).any(1).nonzero()[0])
            i, name = files[m]
            raise BrodenFormatError(f"{self._where(i)}: {self._file(i, name)} holds label number(s) "
                                    f"{lab[m][bad[m]].unique()[:5].tolist()} that label.csv does not define")
        return lab

    def segmentation(self, i: int) -> dict:
        """``{category: list}`` for image ``i``: LongTensor[sh, sw] label maps for PNG
        entries, ints for whole-image labels; empty list when not labelled."""
        row = self.rows[i]
        return {cat: [x if isinstance(x, int) else torch.from_numpy(self._png(i, x)) for x in row[cat]]
                for cat in self.categories}

    # ---- batches
    def batch_plan(self, batch_size: int = 64, indices=None) -> list[list[int]]:
        """The rows of each batch ``batches`` yields, without reading any file: runs of
        at most ``batch_size`` consecutive ``indices`` (default: all rows, in order)
        that share their image and segmentation sizes."""
        batch_size = positive_int(batch_size, "batch_size")
        idx = range(len(self)) if indices is None else [int(i) for i in indices]
        plan: list[list[int]] = []
        for i in idx:
            sizes = [self.rows[i][k] for k in SIZES]
            if plan and len(plan[-1]) < batch_size and sizes == [self.rows[plan[-1][0]][k] for k in SIZES]:
                plan[-1].append(i)
            else:
                plan.append([i])
        return plan

    def batches(self, batch_size: int = 64, indices=None, images: bool = True, segmentations: bool = True):
        """Yield a ``Batch`` for each group of ``batch_plan(batch_size, indices)``.

        A batch never mixes image or segmentation sizes (it ends early instead), so
        its images stack into one tensor at their stored size. ``images=False``
        skips reading the JPEGs (``Batch.images`` is then None), ``segmentations=False``
        the PNGs (``pixels`` is then empty, ``whole`` and ``labelled`` still filled).
        """
        for group in self.batch_plan(batch_size, indices):
            yield self._batch(group, images, segmentations)

    def _batch(self, group: list[int], images: bool = True, segmentations: bool = True) -> Batch:
        images = torch.stack([self.image(i) for i in group]) if images else None
        sh, sw = self.rows[group[0]]["sh"], self.rows[group[0]]["sw"]
        cells = [[self.rows[i][cat] for cat in self.categories] for i in group]
        labelled = torch.tensor([[bool(c) for c in row] for row in cells], dtype=torch.bool)
        items = [[x for c in row for x in c] for row in cells]
        whole = [[x for x in row if isinstance(x, int)] for row in items]
        names = [[x for x in row if not isinstance(x, int)] if segmentations else [] for row in items]
        k = max(1, max(len(n) for n in names)) if segmentations else 0
        j = max(1, max(len(w) for w in whole))
        red_green = torch.zeros(len(group) * k, 2, sh, sw, dtype=torch.uint8)
        files = [None] * len(red_green)                  # (row, file name) of each filled map
        for b, (i, row) in enumerate(zip(group, names)):
            for q, name in enumerate(row):
                red_green[b * k + q] = self._rgb(i, name, "segmentation", (sh, sw))[:2]
                files[b * k + q] = (i, name)
        pixels = self._label_numbers(red_green, files).view(len(group), k, sh, sw)
        wl = torch.zeros(len(group), j, dtype=torch.long)
        for b, w in enumerate(whole):
            wl[b, :len(w)] = torch.tensor(w, dtype=torch.long)
        return Batch(images, pixels, wl, labelled, list(group))


def read(folder) -> Broden:
    """Read the Broden-format folder ``folder`` (see ``Broden``); ``broden.open`` is this function."""
    return Broden(folder)


def __getattr__(name: str):
    # ``broden.open`` is the public name of ``read``; served from here so that inside this
    # module ``open`` is still Python's built-in
    if name == "open":
        return read
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
