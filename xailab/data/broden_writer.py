"""Writing a Broden-format folder (the format is described in ``xailab.data.broden``,
which reads it and exports ``write`` under its own name).

``write(folder, categories, labels, records)`` saves the images as JPEG, the pixel
labels as RGB PNGs (label = R + 256 * G) and the CSV tables, with frequencies and
coverages counted from the data.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["write", "INDEX_FIXED"]

INDEX_FIXED = ["image", "split", "ih", "iw", "sh", "sw"]      # index.csv's columns before the categories
CSV_LINE_END = "\r\n"            # what Python's csv module writes, as NetDissect's files have


def _save_png(path: Path, lab: np.ndarray):
    from PIL import Image

    lab = np.asarray(lab, dtype=np.int64)
    if lab.min() < 0 or lab.max() >= 65536:
        raise ValueError(f"label numbers must be in 0..65535 for {path.name}")
    rgb = np.zeros(lab.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = lab % 256
    rgb[..., 1] = lab // 256
    Image.fromarray(rgb, "RGB").save(path, optimize=False, compress_level=1)


def _save_csv(path: Path, columns: list[str], rows: list[list]):
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False, lineterminator=CSV_LINE_END)


class _Counts:
    """What the writer counts while it saves the records: per category and label the
    images in which the label appears and the area it covers (in whole images), and
    per category the images that have data for it."""

    def __init__(self, n_categories: int, n_labels: int):
        self.frequency = np.zeros((n_categories, n_labels + 1))
        self.coverage = np.zeros((n_categories, n_labels + 1))
        self.category_frequency = np.zeros(n_categories)

    def add_map(self, c: int, lab: np.ndarray):
        counts = np.bincount(lab.ravel(), minlength=self.frequency.shape[1])
        seen = counts > 0
        seen[0] = False
        self.frequency[c, seen] += 1
        self.coverage[c, seen] += counts[seen] / lab.size

    def add_whole(self, c: int, n: int):
        self.frequency[c, n] += 1
        self.coverage[c, n] += 1.0


def _check_record(i: int, rec: dict, categories: list[str]) -> np.ndarray:
    unknown = set(rec) - {"image", "split", "name"} - set(categories)
    if unknown:
        raise ValueError(f"record {i}: keys {sorted(unknown)} are neither image, split, name "
                         f"nor one of the categories {categories}")
    img = np.asarray(rec["image"])
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"record {i}: image must be a uint8 array [H, W, 3]")
    return img


def _write_record(folder: Path, i: int, rec: dict, categories: list[str], counts: _Counts, quality: int) -> list:
    """Save record ``i``'s image and segmentation PNGs, count its labels; its index.csv row."""
    from PIL import Image

    img, n_labels = _check_record(i, rec, categories), counts.frequency.shape[1] - 1
    stem = rec.get("name", f"synthetic_{i:06d}")
    Image.fromarray(img, "RGB").save(folder / "images" / f"{stem}.jpg", quality=quality, subsampling=0)
    seg_size, cells = None, []
    for c, cat in enumerate(categories):
        cell = []
        for q, item in enumerate(rec.get(cat, []) or []):
            if isinstance(item, (int, np.integer)):
                if not 1 <= int(item) <= n_labels:
                    raise ValueError(f"record {i}: whole-image label {int(item)} out of 1..{n_labels}")
                cell.append(str(int(item)))
                counts.add_whole(c, int(item))
                continue
            lab = np.asarray(item)
            if seg_size is not None and lab.shape != seg_size:
                raise ValueError(f"record {i}: segmentations of one image must share a size")
            seg_size = lab.shape
            if lab.max() > n_labels or lab.min() < 0:
                raise ValueError(f"record {i}: label number {int(lab.max())} out of 0..{n_labels}")
            cell.append(f"{stem}_{cat}" + (f"_{q}" if q else "") + ".png")
            _save_png(folder / "images" / cell[-1], lab)
            counts.add_map(c, lab)
        counts.category_frequency[c] += bool(cell)
        cells.append(";".join(cell))
    sh, sw = seg_size if seg_size is not None else (img.shape[0] // 2, img.shape[1] // 2)
    return [f"{stem}.jpg", rec.get("split", "train"), img.shape[0], img.shape[1], sh, sw] + cells


def _write_tables(folder: Path, categories: list[str], labels: list[tuple[str, str]], counts: _Counts):
    """category.csv, label.csv and one c_<category>.csv per category."""
    freq, cover = counts.frequency, counts.coverage
    cat_rows = []
    for c, cat in enumerate(categories):
        nums = [k + 1 for k, (_, lc) in enumerate(labels) if lc == cat or freq[c, k + 1] > 0]
        cat_rows.append([cat, min(nums, default=0), max(nums, default=0), len(nums),
                         int(counts.category_frequency[c])])
        _save_csv(folder / f"c_{cat}.csv", ["code", "number", "name", "frequency", "coverage"],
                  [[code + 1, n, labels[n - 1][0], int(freq[c, n]), f"{cover[c, n]:.6f}"]
                   for code, n in enumerate(nums)])
    _save_csv(folder / "category.csv", ["name", "first", "last", "count", "frequency"], cat_rows)
    _save_csv(folder / "label.csv", ["number", "name", "category", "frequency", "coverage", "syns"],
              [[k + 1, name, ";".join(f"{categories[c]}({int(freq[c, k + 1])})" for c in range(len(categories))
                                      if freq[c, k + 1] > 0 or categories[c] == cat),
                int(freq[:, k + 1].sum()), f"{cover[:, k + 1].sum():.6f}", name]
               for k, (name, cat) in enumerate(labels)])


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
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for name, cat in labels:
        if cat not in categories:
            raise ValueError(f"label {name!r} has category {cat!r}, which is not in {categories}")
    counts = _Counts(len(categories), len(labels))
    rows = [_write_record(folder, i, rec, categories, counts, quality) for i, rec in enumerate(records)]
    _save_csv(folder / "index.csv", INDEX_FIXED + list(categories), rows)
    _write_tables(folder, categories, labels, counts)
    return folder
