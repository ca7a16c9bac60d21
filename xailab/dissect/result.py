"""What a dissection found for one layer: ``Dissection``, with its IoU table, unit
labels and NetDissect's tally table (``tally``, ``summary``, ``to_csv``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from ..solving import solves


@dataclass
class Dissection:
    """What ``dissect`` found for one layer (see the module docstring).

    ``iou`` FloatTensor[units, concepts]; ``concepts`` label names in column order
    (column j is Broden label number j + 1); ``concept_categories`` their primary
    categories; ``thresholds`` FloatTensor[units]; ``intersection``, ``activation``,
    ``truth`` the summed pixel counts behind each IoU (float64); ``top_images``
    LongTensor[units, k], dataset rows where each unit's peak activation is highest.
    """
    layer: str
    iou: torch.Tensor
    concepts: list
    concept_categories: list
    categories: list
    thresholds: torch.Tensor
    intersection: torch.Tensor
    activation: torch.Tensor
    truth: torch.Tensor
    top_images: torch.Tensor
    top_scores: torch.Tensor
    quantile: float
    iou_cutoff: float
    n_images: int
    folder: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def n_units(self) -> int:
        return self.iou.shape[0]

    @solves("dissect.best")
    def best(self, category: str | None = None):
        """Best concept per unit (overall, or within ``category``): (column LongTensor[U], IoU FloatTensor[U])."""
        iou = self.iou
        if category is not None:
            if category not in self.categories:
                raise ValueError(f"unknown category {category!r}; choose one of {self.categories}")
            keep = torch.tensor([c == category for c in self.concept_categories])
            iou = torch.where(keep, iou, torch.full_like(iou, -1.0))
        score, col = iou.max(1)
        return col, score.clamp_min(0)

    def labels(self) -> list[str]:
        """Best concept name per unit."""
        return [self.concepts[int(c)] for c in self.best()[0]]

    def tally(self) -> pd.DataFrame:
        """NetDissect's tally table as a pandas DataFrame, one row per unit sorted by
        score: ``unit`` (0-based channel), ``category``, ``label``, ``score`` (IoU of
        the best concept overall), then per category ``<cat>-label``, ``-truth``,
        ``-activation``, ``-intersect``, ``-iou`` for the unit's best concept there
        (empty and 0 when the category has no concept)."""
        col, score = (c.tolist() for c in self.best())
        table = {"unit": range(self.n_units), "category": [self.concept_categories[j] for j in col],
                 "label": [self.concepts[j] for j in col], "score": score}
        units = torch.arange(self.n_units)
        for c in self.categories:
            k = self.best(c)[0]
            ok = torch.tensor([self.concept_categories[j] == c for j in k.tolist()], dtype=torch.bool)
            table[f"{c}-label"] = [self.concepts[j] if o else "" for j, o in zip(k.tolist(), ok.tolist())]
            for column, values in (("truth", self.truth[k]), ("activation", self.activation[units, k]),
                                   ("intersect", self.intersection[units, k])):
                table[f"{c}-{column}"] = torch.where(ok, values, 0).long().numpy()
            table[f"{c}-iou"] = torch.where(ok, self.iou[units, k], 0).double().numpy()
        t = pd.DataFrame(table)
        return t.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)

    def detectors(self, cutoff: float | None = None) -> pd.DataFrame:
        """Tally rows of the units whose best IoU exceeds ``cutoff`` (default: ``iou_cutoff``)."""
        cutoff = self.iou_cutoff if cutoff is None else cutoff
        t = self.tally()
        return t[t.score > cutoff].reset_index(drop=True)

    def summary(self, cutoff: float | None = None) -> pd.DataFrame:
        """Per category: ``detectors`` = units whose best concept overall is in the
        category with IoU > cutoff (each unit counted once), ``unique`` = distinct
        concepts those units detect."""
        d = self.detectors(cutoff)
        return pd.DataFrame([{"category": c, "detectors": int((d.category == c).sum()),
                              "unique": int(d.label[d.category == c].nunique())}
                             for c in self.categories]).set_index("category")

    def to_csv(self, path) -> Path:
        """Write the tally table (NetDissect's tally.csv columns, floats with 6 decimals) to ``path``."""
        path = Path(path)
        self.tally().to_csv(path, index=False, float_format="%.6f", lineterminator="\r\n")
        return path

    def __repr__(self):
        n = int((self.best()[1] > self.iou_cutoff).sum())
        return (f"Dissection({self.layer!r}: {self.n_units} units x {len(self.concepts)} concepts, "
                f"{self.n_images} images, {n} detectors with IoU > {self.iou_cutoff})")
