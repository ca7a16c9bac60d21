"""Checks for lab 06 (network dissection): unit thresholds and the IoU table.

    from xailab.checks import lab06
    lab06.check_thresholds(unit_thresholds)   # fn(acts [N,U,h,w], top) -> [U]
    lab06.check_iou(iou_table)                # fn(masks [N,U,H,W] bool, labels [N,H,W], n) -> [U, n]

Each check prints a verdict in words and returns the ``Report`` (truthy when passed).
"""
from __future__ import annotations

import torch

from .core import Report, call, name_of as _name, require_tensor


def reference_thresholds(acts: torch.Tensor, top: float) -> torch.Tensor:
    """Per unit, the (1 - top) quantile over images and positions (linear interpolation)."""
    u = acts.shape[1]
    return torch.quantile(acts.transpose(0, 1).reshape(u, -1).double(), 1 - top, dim=1).float()


def reference_iou(masks: torch.Tensor, labels: torch.Tensor, n_concepts: int) -> torch.Tensor:
    """IoU[u, c - 1] = |mask_u & (labels == c)| / |mask_u | (labels == c)| summed over
    the dataset; 0 where both are empty."""
    m = masks.transpose(0, 1).reshape(masks.shape[1], -1).double()
    onehot = torch.nn.functional.one_hot(labels.reshape(-1), n_concepts + 1)[:, 1:].double()
    inter = m @ onehot
    union = m.sum(1, keepdim=True) + onehot.sum(0, keepdim=True) - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(union)).float()


def check_thresholds(fn, verbose: bool = True) -> Report:
    """``fn(acts, top)``: acts FloatTensor[N, U, h, w] -> FloatTensor[U], the level
    above which the top fraction ``top`` of each unit's values lies."""
    report = Report("check_thresholds")
    g = torch.Generator().manual_seed(6)
    cases = [(torch.randn(6, 5, 8, 8, generator=g).relu() * 3, 0.005),
             (torch.rand(3, 4, 7, 9, generator=g), 0.05),
             (torch.randn(2, 3, 4, 4, generator=g), 0.2)]
    for acts, top in cases:
        got = call(report, fn, acts.clone(), top)
        if not report.passed:
            break
        got = require_tensor(report, fn, got, "one threshold per unit (a torch.Tensor)")
        if got is None:
            break
        want = reference_thresholds(acts, top)
        if tuple(got.shape) == tuple(want.shape) == (acts.shape[1],) and \
                torch.allclose(got.float(), reference_thresholds(acts, 1 - top), atol=1e-5):
            report.fail(f"with top={top} you returned the {top} quantile, the bottom of the range: "
                        "the threshold is the (1 - top) quantile")
            break
        if tuple(got.shape) == (acts.shape[0],) or tuple(got.shape) == ():
            report.fail(f"result has shape {tuple(got.shape)}: compute one threshold per unit "
                        "(dimension 1), over images and positions together")
            break
        if not report.compare(f"thresholds for acts of shape {tuple(acts.shape)}, top={top}",
                              got, want, tol=1e-4):
            break
    if verbose:
        report.show()
    return report


def check_iou(fn, verbose: bool = True) -> Report:
    """``fn(masks, labels, n_concepts)``: masks BoolTensor[N, U, H, W], labels
    LongTensor[N, H, W] (0 = unlabeled, 1..n_concepts) -> FloatTensor[U, n_concepts],
    the IoU summed over the whole dataset (not averaged per image)."""
    report = Report("check_iou")
    g = torch.Generator().manual_seed(60)
    masks = torch.rand(5, 4, 6, 6, generator=g) > 0.7
    labels = torch.randint(0, 4, (5, 6, 6), generator=g)
    labels[:, :2] = 0
    masks[:, 3] = labels == 2          # unit 3 is a perfect detector of concept 2
    masks[:, 2] = False                # unit 2 never fires
    cases = [(masks, labels, 3), (masks[:2], labels[:2], 5)]
    for m, lab, n in cases:
        got = call(report, fn, m.clone(), lab.clone(), n)
        if not report.passed:
            break
        got = require_tensor(report, fn, got, "an IoU table [units, concepts] (a torch.Tensor)")
        if got is None:
            break
        want = reference_iou(m, lab, n)
        if tuple(got.shape) != tuple(want.shape):
            hint = " (one column per concept 1..n_concepts; 0 is 'unlabeled', not a concept)" \
                if got.dim() == 2 and got.shape[1] == n + 1 else ""
            report.fail(f"result has shape {tuple(got.shape)}, expected {tuple(want.shape)}{hint}")
            break
        if torch.isnan(got.float()).any():
            report.fail("the table has NaN: a unit that never fires and a concept that never "
                        "appears give 0 / 0; make that IoU 0")
            break
        per_image = torch.stack([reference_iou(m[i:i + 1], lab[i:i + 1], n) for i in range(len(m))]).mean(0)
        if torch.allclose(got.float(), per_image, atol=1e-5) and not torch.allclose(per_image, want, atol=1e-5):
            report.fail("you averaged per-image IoUs; dissection sums intersections and unions over "
                        "the whole dataset first, then divides once")
            break
        if not report.compare(f"IoU table for {len(m)} images, {n} concepts", got, want, tol=1e-5):
            break
    if report.passed and got is not None and float(got[3, 1]) > 0.999:
        report.ok("unit 3 is a perfect detector of concept 2: IoU 1.0")
    if verbose:
        report.show()
    return report


def check_interpretation(fn, verbose: bool = True) -> Report:
    """``fn()`` returns your answers to the interpretation questions as text. Nothing
    here can grade an interpretation: the check only makes sure all three questions
    have an answer, and reminds you what a good answer refers to."""
    report = Report("check_interpretation")
    got = call(report, fn)
    if report.passed:
        if not isinstance(got, str) or not got.strip():
            report.fail(f"{_name(fn)} should return your answers as a non-empty string")
        else:
            numbered = [k for k in ("1.", "2.", "3.") if k in got]
            if len(numbered) < 3:
                report.fail("number your answers 1., 2. and 3., one per question")
            else:
                report.ok("three answers written. A good answer cites numbers from the tally "
                          "(IoU, part-iou, colour coverage) and what the top images show.")
    if verbose:
        report.show()
    return report
