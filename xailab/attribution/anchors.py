"""Anchors for images (Ribeiro, Singh & Guestrin 2018), a compact implementation.

An anchor is a set A of superpixels that "anchors" the prediction: whatever
happens to the other superpixels, the model keeps its answer with high
probability. Formally, with D(z | A) the perturbations that keep every
superpixel of A and switch each other superpixel off (``baseline``) with
probability 1 - ``p_keep``:

    precision(A) = P_{z ~ D(z|A)} [ argmax f(z) = label ]      (must reach ``threshold``)
    coverage(A)  = P_{z ~ D(z|{})} [ A is kept in z ]          (to be maximised)

The search is the paper's beam search, simplified: anchors grow one superpixel
at a time; each candidate's precision is estimated from ``n_samples`` sampled
perturbations (all candidates of a round in shared, batched forward passes);
the promising ones get ``n_confirm`` more samples (up to ``confirm_rounds``
times, while their confidence interval straddles the threshold), and a
candidate is accepted when the KL lower confidence bound of its precision
(confidence 1 - ``delta``) reaches the threshold. Among accepted anchors of the smallest size, the one
with the largest coverage (then precision) wins; otherwise the ``beam_size``
best candidates grow further. ``alibi``'s AnchorImage does the same with the
full KL-LUCB bandit; it cannot be installed beside this course's pins.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from ..runtime import default_batch_size, fast_layout, inference_copy, positive_int
from . import register, resolve_target
from .superpixel import _hide_image, _segments_for, _superpixel_fill

__all__ = ["Anchor", "anchor_explanation", "anchors", "kl_lower_bound", "kl_upper_bound"]


@dataclass
class Anchor:
    """The result of ``anchor_explanation`` for one image."""
    label: int                  # the class the anchor holds
    segments: list              # superpixel ids of the anchor, in the order they were added
    mask: torch.Tensor          # BoolTensor[H,W]: the anchor's pixels
    precision: float            # estimated P(prediction stays `label` | anchor kept)
    precision_lower: float      # KL lower confidence bound of the precision
    coverage: float             # estimated share of perturbations that keep the anchor
    threshold: float
    reached: bool               # precision_lower >= threshold
    forward_passes: int         # images evaluated by the model during the search
    superpixels: torch.Tensor = field(repr=False)   # LongTensor[H,W] superpixel labels

    def __str__(self):
        size = f"{len(self.segments)} superpixel{'s' * (len(self.segments) != 1)}"
        return (f"anchor of {size} ({int(self.mask.sum())} px): precision {self.precision:.3f} "
                f"(lower bound {self.precision_lower:.3f}, threshold {self.threshold}), "
                f"coverage {self.coverage:.3f}" + ("" if self.reached else "  [threshold NOT reached]"))


def _kl_bernoulli(p: float, q: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    q = min(max(q, 1e-12), 1 - 1e-12)
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def _kl_bound(p_hat: float, n: int, delta: float, upper: bool) -> float:
    """Bisection between p_hat (inside the KL ball) and 0 or 1 (maybe outside) for the ball's edge."""
    if n == 0:
        return 1.0 if upper else 0.0
    level = math.log(1.0 / delta) / n
    inside, outside = p_hat, (1.0 if upper else 0.0)
    for _ in range(40):
        mid = (inside + outside) / 2
        if _kl_bernoulli(p_hat, mid) > level:
            outside = mid
        else:
            inside = mid
    return inside


def kl_lower_bound(p_hat: float, n: int, delta: float = 0.1) -> float:
    """Smallest q <= p_hat with n * KL(p_hat || q) <= log(1 / delta) (the KL-LUCB bound)."""
    return _kl_bound(p_hat, n, delta, upper=False)


def kl_upper_bound(p_hat: float, n: int, delta: float = 0.1) -> float:
    """Largest q >= p_hat with n * KL(p_hat || q) <= log(1 / delta)."""
    return _kl_bound(p_hat, n, delta, upper=True)


def anchor_explanation(model: nn.Module, x: torch.Tensor, target=None, **options) -> Anchor:
    """Find an anchor for one image ``x`` ([3,H,W] or [1,3,H,W]); see the module docstring.

    ``target`` (default: the predicted class) is the label the anchor must hold.
    Options as for ``anchors``. Cost: about (candidates per round) * ``n_samples`` + a
    few * ``n_confirm`` forward passes per round; ``Anchor.forward_passes`` reports the total.
    """
    if isinstance(x, torch.Tensor) and x.dim() == 3:
        x = x[None]
    return anchors.method.run(model, x, target, fn=_anchor_search, **options)


def _anchor_search(model, x, target=None, threshold: float = 0.95, beam_size: int = 2,
                   max_size: int | None = None, n_samples: int = 24, n_confirm: int = 64,
                   confirm_rounds: int = 3, n_coverage: int = 1000, p_keep: float = 0.5,
                   delta: float = 0.1, seed: int = 0, segmentation="quickshift",
                   segment_options: dict | None = None, baseline=0.0,
                   batch_size: int | None = None) -> Anchor:
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError(f"anchor_explanation explains one image; got {x.shape[0]} "
                             "(use xailab.explain(..., method='anchors') for a batch)")
        x = x[0]
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold (the precision an anchor must reach) must be in (0, 1), got {threshold}")
    if not 0.0 < p_keep < 1.0:
        raise ValueError(f"p_keep must be in (0, 1), got {p_keep}")
    batch_size = positive_int(default_batch_size(x) if batch_size is None else batch_size, "batch_size")
    label = int(resolve_target(model, x[None], target)[0])
    seg = torch.from_numpy(_segments_for(x[None], segmentation, seed, segment_options)[0]).to(x.device)
    search = _Search(model, x, seg, label, baseline, p_keep, delta, threshold, seed, n_coverage, batch_size)
    k = search.k
    max_size = k if max_size is None else min(int(max_size), k)
    return search.run(positive_int(beam_size, "beam_size"), max_size, positive_int(n_samples, "n_samples"),
                      positive_int(n_confirm, "n_confirm"), confirm_rounds)


class _Search:
    """The state of one anchor search: sampled precision statistics per candidate anchor
    (a frozenset of superpixel ids), the coverage sample and the forward-pass count."""

    def __init__(self, model, x, seg, label, baseline, p_keep, delta, threshold, seed, n_coverage,
                 batch_size):
        self.model, self.x, self.seg, self.label = model, x, seg, label
        self.k = int(seg.max()) + 1
        self.fill = _superpixel_fill(x, seg, _hide_image(x, baseline))
        self.p_keep, self.delta, self.threshold, self.batch_size = p_keep, delta, threshold, batch_size
        self.gen = torch.Generator().manual_seed(int(seed))
        self.stats: dict[frozenset, list] = {}           # anchor -> [hits, samples]
        self.order = {frozenset(): []}                   # anchor -> superpixels in the order added
        self.passes = 0
        self.cov_z = torch.rand(n_coverage, self.k, generator=self.gen) < p_keep   # from D(z | {})

    def sample(self, anchors: list, n_each: int):
        """Draw n_each perturbations per anchor, evaluate all in shared batches, update stats."""
        z = torch.rand(len(anchors) * n_each, self.k, generator=self.gen) < self.p_keep
        for j, a in enumerate(anchors):
            if a:
                z[j * n_each:(j + 1) * n_each, list(a)] = True
        hits = torch.empty(len(z), dtype=torch.bool)
        with torch.no_grad():
            net = inference_copy(self.model)
            for s in range(0, len(z), self.batch_size):
                zz = z[s:s + self.batch_size].to(self.x.device, self.x.dtype)
                hits[s:s + self.batch_size] = (net(fast_layout(self.fill(zz))).argmax(1) == self.label).cpu()
        self.passes += len(z)
        for j, a in enumerate(anchors):
            st = self.stats.setdefault(a, [0, 0])
            st[0] += int(hits[j * n_each:(j + 1) * n_each].sum())
            st[1] += n_each

    def precision(self, a) -> float:
        h, n = self.stats[a]
        return h / n if n else 0.0

    def lower(self, a) -> float:
        h, n = self.stats[a]
        return kl_lower_bound(h / n, n, self.delta) if n else 0.0

    def upper(self, a) -> float:
        h, n = self.stats[a]
        return kl_upper_bound(h / n, n, self.delta) if n else 1.0

    def undecided(self, a) -> bool:
        return self.lower(a) < self.threshold <= self.upper(a)

    def coverage(self, a) -> float:
        return float(self.cov_z[:, list(a)].all(1).float().mean()) if a else 1.0

    def confirm(self, anchors: list, n_confirm: int, rounds: int):
        """More samples for the anchors whose confidence interval straddles the threshold."""
        for _ in range(rounds):
            undecided = [a for a in anchors if self.undecided(a)]
            if not undecided:
                break
            self.sample(undecided, n_confirm)

    def grow(self, beam: list) -> list:
        """Every anchor of the beam with one more superpixel (each candidate once)."""
        cands = []
        for a in beam:
            for j in range(self.k):
                c = a | {j}
                if j not in a and c not in self.order:
                    self.order[c] = self.order[a] + [j]
                    cands.append(c)
        return cands

    def result(self, a, reached: bool) -> Anchor:
        ordered = list(self.order.get(a, sorted(a)))
        ids = torch.tensor(ordered, device=self.x.device, dtype=self.seg.dtype)
        mask = (self.seg[..., None] == ids).any(-1) if ordered else torch.zeros_like(self.seg, dtype=torch.bool)
        return Anchor(self.label, ordered, mask, self.precision(a), self.lower(a), self.coverage(a),
                      self.threshold, reached, self.passes, self.seg)

    def run(self, beam_size, max_size, n_samples, n_confirm, confirm_rounds) -> Anchor:
        """The beam search of the module docstring."""
        empty, threshold = frozenset(), self.threshold
        for _ in range(confirm_rounds):
            self.sample([empty], n_confirm)
            if not self.undecided(empty):
                break
        if self.lower(empty) >= threshold:
            return self.result(empty, True)
        beam, best = [empty], empty
        for _ in range(max_size):
            cands = self.grow(beam)
            if not cands:
                break
            self.sample(cands, n_samples)
            cands.sort(key=lambda c: (self.precision(c), self.coverage(c)), reverse=True)
            # confirm the most promising (estimate at the threshold; at least the beam)
            promising = [c for c in cands if self.precision(c) >= threshold][:2 * beam_size] or cands[:beam_size]
            self.confirm(promising, n_confirm, confirm_rounds)
            accepted = [c for c in promising if self.lower(c) >= threshold]
            if accepted:
                return self.result(max(accepted, key=lambda c: (self.coverage(c), self.precision(c))), True)
            ranked = sorted(set(promising) | set(cands[:beam_size]),
                            key=lambda c: (self.lower(c), self.precision(c)), reverse=True)
            beam = ranked[:beam_size]
            if self.lower(beam[0]) > self.lower(best) or best == empty:
                best = beam[0]
        warnings.warn(f"no anchor of at most {max_size} superpixels reached precision {threshold}; "
                      "returning the best found (raise max_size or lower the threshold)")
        return self.result(best, False)


@register("anchors", "perturbation",
          "the smallest set of superpixels that keeps the prediction with high precision "
          "whatever happens to the rest (heatmap: 1 on the anchor)",
          "Ribeiro, Singh & Guestrin 2018, Anchors: High-Precision Model-Agnostic Explanations, AAAI",
          cost="slow", cheap=dict(n_samples=8, n_confirm=16, confirm_rounds=1, n_coverage=20, max_size=1))
def anchors(model: nn.Module, x: torch.Tensor, target=None, threshold: float = 0.95, beam_size: int = 2,
            max_size: int | None = None, n_samples: int = 24, n_confirm: int = 64,
            confirm_rounds: int = 3, n_coverage: int = 1000, p_keep: float = 0.5, delta: float = 0.1,
            seed: int = 0, segmentation="quickshift", segment_options: dict | None = None,
            baseline=0.0, batch_size: int | None = None) -> torch.Tensor:
    """Anchor masks as a heatmap FloatTensor[N,H,W] (1 on the anchor, 0 elsewhere).

    ``anchor_explanation`` finds the same anchors and also reports precision and coverage.
    """
    options = dict(threshold=threshold, beam_size=beam_size, max_size=max_size, n_samples=n_samples,
                   n_confirm=n_confirm, confirm_rounds=confirm_rounds, n_coverage=n_coverage,
                   p_keep=p_keep, delta=delta, seed=seed, segmentation=segmentation,
                   segment_options=segment_options, baseline=baseline, batch_size=batch_size)
    target = resolve_target(model, x, target)
    return torch.stack([_anchor_search(model, x[i:i + 1], target[i:i + 1], **options).mask.to(x.dtype)
                        for i in range(x.shape[0])])
