"""Testing with concept activation vectors (TCAV, Kim et al. 2018, ICML).

A *concept* is a set of example images (striped things, a watermark, red objects).
TCAV asks how much the concept pushes a class score:

1. CAV: a linear classifier separates the layer's activations of the concept images
   from those of random counter-examples; the CAV ``v`` is the unit normal of its
   boundary, pointing towards the concept. Its held-out accuracy says whether the
   layer represents the concept at all.
2. Directional derivative: ``S(x) = grad_A f_c(x) . v``, the change of the class
   logit ``f_c`` when the layer's activation ``A`` moves along the CAV.
3. TCAV score of class c: the share of the class's images with ``S(x) > 0``.

One CAV depends on the random set it was trained against, so the test is repeated
with many random sets, and the scores are compared (two-sided t-test) with those of
CAVs trained between two random sets. A score is reported only when the difference
is significant; otherwise it is NaN. Testing several classes at once, the p-values are
Holm-corrected (``correction="holm"``, the default) so that the chance of any false
"significant" stays below ``alpha``.

The concept may be one image set, used in every run as in the paper, or one set per
run (a list, as long as ``random_sets``). Only the second makes the runs independent
draws of the concept: with one fixed set every run shares its particular images, and
the t-test then also rejects for a set of random images when there are enough runs.

The classifier is scikit-learn's L2 logistic regression on a seeded split
(deterministic, and it converges in a fraction of a second on these activations);
``classifier="sgd"`` uses Captum's default, ``SGDClassifier(alpha=0.01, max_iter=1000,
tol=1e-3)``, seeded. Captum splits and shuffles with the global random state, so its
CAVs differ from run to run; fed the same CAVs, both give the same scores, and their
own CAVs agree in direction and score to a stated tolerance (tests/test_concepts.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import hooks
from .attribution.cam import layer_pass, resolve_layer
from .runtime import batched, default_batch_size, device_of, positive_int
from .solving import solves

__all__ = ["tcav", "TCAVResult", "train_cav", "directional_derivatives", "tcav_score",
           "layer_activations", "load_images", "broden_concept", "objects_coloured", "watermarked", "random_sets",
           "class_images", "holm"]


@dataclass
class TCAVResult:
    """What ``tcav`` returns; every per-class tensor follows ``classes``."""
    concept: str
    layer: str
    classes: list
    scores: torch.Tensor             # [K] mean TCAV score over runs; NaN where not significant
    p_values: torch.Tensor           # [K] two-sided t-test, concept runs vs random runs
    significant: torch.Tensor        # [K] bool, corrected p < alpha
    cav_accuracy: float              # mean held-out accuracy of the concept CAVs
    concept_scores: torch.Tensor     # [R,K] TCAV score of each concept CAV (one per random set)
    random_scores: torch.Tensor      # [R,K] the same for CAVs trained random vs random
    accuracies: torch.Tensor = field(default=None)   # [R] held-out accuracy of each concept CAV
    alpha: float = 0.05
    p_adjusted: torch.Tensor = field(default=None)   # [K] p-values after the correction
    correction: str = "holm"

    def table(self):
        """A pandas DataFrame: one row per class."""
        import pandas as pd
        return pd.DataFrame({"class": self.classes,
                             "tcav": self.concept_scores.mean(0).numpy(),
                             "tcav sd": self.concept_scores.std(0).numpy(),
                             "random": self.random_scores.mean(0).numpy(),
                             "random sd": self.random_scores.std(0).numpy(),
                             "p": self.p_values.numpy(),
                             f"p ({self.correction})": self.adjusted().numpy(),
                             "significant": self.significant.numpy()}).set_index("class")

    def adjusted(self) -> torch.Tensor:
        return self.p_values if self.p_adjusted is None else self.p_adjusted


# ---------------------------------------------------------------- image sets

def load_images(source, size: int | None = None) -> torch.Tensor:
    """A set of images as FloatTensor[N,3,H,W] in [0, 1]: a tensor as it is, or every
    PNG/JPEG file of a folder (sorted by name). ``size``: resized to size x size."""
    if isinstance(source, torch.Tensor):
        images = source
    else:
        from torchvision.io import ImageReadMode, decode_image
        files = sorted(p for p in Path(source).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if not files:
            raise ValueError(f"{source} holds no .png or .jpg images")
        images = [decode_image(str(p), mode=ImageReadMode.RGB).float() / 255 for p in files]
        if size is None and len({im.shape for im in images}) > 1:
            raise ValueError(f"the images in {source} differ in size; pass size= to resize them")
        images = torch.stack([_resized(im[None], size)[0] for im in images]) if size else torch.stack(images)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"a concept or class set must be images [N,3,H,W], got shape {tuple(images.shape)}")
    return _resized(images, size) if size else images


def _resized(images, size):
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False).clamp(0, 1)


def broden_concept(dataset, name: str, n: int = 50, size: int = 64) -> torch.Tensor:
    """The ``n`` images of a Broden dataset (folder or ``broden.open`` result) in which the
    pixel label ``name`` (e.g. ``"red-c"``, ``"striped"``) covers the largest share,
    resized to ``size``. Reads the segmentations in batches."""
    from .data import broden
    ds = broden.open(dataset) if isinstance(dataset, (str, Path)) else dataset
    if name not in ds.label_names:
        raise ValueError(f"{name!r} is not a label of {ds}; labels: {ds.label_names[1:]}")
    number = ds.label_names.index(name)
    share = torch.zeros(len(ds))
    start = 0
    for b in ds.batches(64, images=False):
        share[start:start + len(b.pixels)] = (b.pixels == number).any(1).flatten(1).float().mean(1)
        start += len(b.pixels)
    best = share.argsort(descending=True)[:n]
    if share[best[-1]] == 0:
        raise ValueError(f"only {int((share > 0).sum())} images show {name!r}; ask for fewer")
    return torch.stack([_resized(ds.image(int(i))[None], size)[0] for i in best])


def random_sets(n_sets: int, n: int = 50, seed: int = 0, size: int = 64, **shapes_options) -> list:
    """``n_sets`` random counter-example sets of ``n`` shapes images each (the val split,
    disjoint sets, every class)."""
    from .data import shapes
    ds = shapes("val", n_sets * n, seed=seed, size=size, **shapes_options)
    images = ds.images()
    return [images[i * n:(i + 1) * n] for i in range(n_sets)]


def balanced(scores: torch.Tensor, labels: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the ``n // K`` images with the lowest ``scores`` in each of the K classes,
    so that a concept set has every class equally often, like the random sets."""
    k = int(labels.max()) + 1
    picks = [torch.nonzero(labels == c).squeeze(1) for c in range(k)]
    return torch.cat([p[scores[p].argsort()[:n // k]] for p in picks])


def objects_coloured(rgb, n: int = 48, seed: int = 0, size: int = 64, pool: int = 3000) -> torch.Tensor:
    """Shapes images (val split, seed ``seed``) whose object's mean colour is closest to
    ``rgb`` (e.g. ``broden.COLORS["red-c"]``), ``n // 6`` per class: a colour concept on
    the shapes data's own backgrounds, so a CAV cannot separate it by style or class."""
    from .data import shapes
    ds = shapes("val", pool, seed=seed, size=size)
    x = ds.images()
    masks = torch.stack([ds.ground_truth(i)["mask"] for i in range(len(ds))])[:, None].float()
    colour = (x * masks).sum((2, 3)) / masks.sum((2, 3)).clamp_min(1)
    return x[balanced((colour - torch.tensor(rgb, dtype=x.dtype)).norm(dim=1), ds.labels, n)]


def watermarked(n: int = 48, seed: int = 0, size: int = 64) -> torch.Tensor:
    """Shapes images (val split) that all carry the shortcut watermark, ``n // 6`` per class."""
    from .data import shapes
    ds = shapes("val", 4 * n, seed=seed, size=size, watermark="all")
    return ds.images()[balanced(torch.zeros(len(ds)), ds.labels, n)]


def class_images(classes, n: int = 50, seed: int = 0, size: int = 64, **shapes_options) -> dict:
    """``{class name: n test images of that class}`` from the shapes data."""
    from .data import CLASSES, shapes
    ds = shapes("test", 12 * n, seed=seed, size=size, **shapes_options)
    out = {}
    for name in classes:
        idx = torch.nonzero(ds.labels == CLASSES.index(name)).squeeze(1)[:n]
        out[name] = ds.images(idx)
    return out


# ---------------------------------------------------------------- the three steps

def layer_activations(model: nn.Module, layer: str, images: torch.Tensor, batch_size=None) -> torch.Tensor:
    """The layer's activations of ``images``, flattened: [N, D], on the model's device,
    ``batch_size`` images per forward pass."""
    device = device_of(model)
    batch_size = default_batch_size(images.to(device)[:1]) if batch_size is None else batch_size
    out = []
    with hooks.frozen(model), torch.no_grad(), hooks.record(model, layer) as rec:
        for s in batched(len(images), batch_size):
            model(images[s].to(device))
            out.append(rec.activations[layer].flatten(1))
    return torch.cat(out)


def train_cav(concept_acts: torch.Tensor, random_acts: torch.Tensor, seed: int = 0,
              test_fraction: float = 0.33, classifier: str = "logistic"):
    """A CAV: (unit vector [D] pointing from the random set to the concept, held-out
    accuracy). Each set is split with ``seed``; the classifier sees ``1 - test_fraction``.
    ``classifier``: ``"logistic"`` (scikit-learn's L2 logistic regression, deterministic)
    or ``"sgd"`` (Captum's default: ``SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3)``,
    seeded here)."""
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    if classifier not in ("logistic", "sgd"):
        raise ValueError(f"classifier must be 'logistic' or 'sgd', got {classifier!r}")
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for label, acts in ((1, concept_acts), (0, random_acts)):
        order = torch.randperm(len(acts), generator=gen)
        n_test = int(round(test_fraction * len(acts)))
        parts.append((acts[order[n_test:]], acts[order[:n_test]], label))
    x_train = torch.cat([p[0] for p in parts]).cpu().double().numpy()
    y_train = np.concatenate([np.full(len(p[0]), p[2]) for p in parts])
    x_test = torch.cat([p[1] for p in parts]).cpu().double().numpy()
    y_test = np.concatenate([np.full(len(p[1]), p[2]) for p in parts])
    clf = (LogisticRegression(max_iter=1000) if classifier == "logistic" else
           SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3, random_state=seed)).fit(x_train, y_train)
    accuracy = float((clf.predict(x_test) == y_test).mean()) if len(y_test) else math.nan
    cav = torch.as_tensor(clf.coef_[0], dtype=concept_acts.dtype, device=concept_acts.device)
    return cav / cav.norm().clamp_min(1e-12), accuracy


@solves("concepts.directional_derivatives")
def directional_derivatives(model: nn.Module, layer: str, images: torch.Tensor, target: int,
                            cav: torch.Tensor, batch_size=None) -> torch.Tensor:
    """S(x) = grad_A f_target(x) . cav for every image: [N]. ``cav`` may also be [R,D]
    (several CAVs at once): then [N,R]."""
    grads = layer_gradients(model, layer, images, target, batch_size)
    cav = cav.to(grads)
    return grads @ (cav.T if cav.dim() == 2 else cav)


def layer_gradients(model, layer, images, target, batch_size=None) -> torch.Tensor:
    """Gradient of the target logit with respect to the layer's activation, flattened: [N, D]."""
    device = device_of(model)
    batch_size = default_batch_size(images.to(device)[:1]) if batch_size is None else batch_size
    with hooks.frozen(model):
        return torch.cat([layer_pass(model, images[s].to(device), torch.tensor([target], device=device),
                                     layer).gradients.flatten(1)
                          for s in batched(len(images), batch_size)])


@solves("concepts.tcav_score")
def tcav_score(derivatives: torch.Tensor) -> torch.Tensor:
    """Share of images whose directional derivative is positive (over dim 0)."""
    return (derivatives > 0).float().mean(0)


def _t_test(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sided p-value of Student's t-test (scipy.stats.ttest_ind); two
    constant samples give 1 when equal and 0 when not."""
    from scipy.stats import ttest_ind
    p = float(ttest_ind(a.numpy(), b.numpy()).pvalue)
    if math.isnan(p):
        return 1.0 if bool(torch.isclose(a.mean(), b.mean())) else 0.0
    return p


def holm(p_values: torch.Tensor) -> torch.Tensor:
    """Holm's step-down correction (1979): the k-th smallest of m p-values is multiplied
    by m - k + 1, then made non-decreasing in that order and capped at 1. Rejecting
    where the result is below alpha keeps the family-wise error rate at alpha."""
    order = p_values.argsort()
    m = len(p_values)
    scaled = p_values[order] * torch.arange(m, 0, -1, dtype=p_values.dtype)
    adjusted = torch.empty_like(p_values)
    adjusted[order] = scaled.cummax(0).values.clamp(max=1.0)
    return adjusted


@solves("concepts.tcav")
def tcav(model: nn.Module, layer, concept, random_sets, classes, alpha: float = 0.05,
         seed: int = 0, batch_size=None, name: str = "concept", classifier: str = "logistic",
         correction: str = "holm") -> TCAVResult:
    """TCAV of ``concept`` for ``classes`` at ``layer``.

    ``concept``: images [N,3,H,W] or a folder, used in every run; or a list of R such
    sets, set i in run i (independent runs, see the module docstring).
    ``random_sets``: a list of R >= 2 counter-example image sets; CAV i is trained
    concept vs random set i, random CAV i random set i vs random set i+1 (cyclically).
    ``classes``: ``{class name or index: images of that class}`` (see ``class_images``).
    ``correction``: ``"holm"`` (over the classes) or ``"none"``.
    Returns a ``TCAVResult``: ``.scores`` (NaN where not significant at ``alpha``),
    ``.p_values`` (uncorrected), ``.p_adjusted``, ``.cav_accuracy``, the per-run scores
    and ``.table()``.
    """
    layer = resolve_layer(model, layer)
    if len(random_sets) < 2:
        raise ValueError("TCAV needs at least 2 random sets (a t-test over CAVs, and random-vs-random CAVs)")
    names = list(classes)
    known = getattr(model, "classes", None) or []
    targets = [known.index(c) if isinstance(c, str) else int(c) for c in names]
    if correction not in ("holm", "none"):
        raise ValueError(f"correction must be 'holm' or 'none', got {correction!r}")
    per_run = isinstance(concept, (list, tuple))
    if per_run and len(concept) != len(random_sets):
        raise ValueError(f"one concept set per run: {len(concept)} concept sets for {len(random_sets)} random sets")
    acts = lambda imgs: layer_activations(model, layer, load_images(imgs), batch_size)  # noqa: E731
    concept_acts = [acts(c) for c in concept] if per_run else [acts(concept)] * len(random_sets)
    random_acts = [acts(r) for r in random_sets]
    r = len(random_acts)
    cavs, accuracy = zip(*[train_cav(concept_acts[i], random_acts[i], seed + i, classifier=classifier)
                           for i in range(r)])
    random_cavs = [train_cav(random_acts[i], random_acts[(i + 1) % r], seed + r + i, classifier=classifier)[0]
                   for i in range(r)]
    all_cavs = torch.stack(list(cavs) + random_cavs)                          # [2R, D]
    scores = torch.stack([tcav_score(directional_derivatives(model, layer, load_images(classes[c]), t,
                                                             all_cavs, batch_size))
                          for c, t in zip(names, targets)], 1).cpu()       # [2R, K]
    concept_scores, random_scores = scores[:r], scores[r:]
    p = torch.tensor([_t_test(concept_scores[:, k], random_scores[:, k]) for k in range(len(names))],
                     dtype=torch.float64)
    adjusted = holm(p) if correction == "holm" else p
    significant = adjusted < alpha
    mean = concept_scores.mean(0)
    return TCAVResult(name, layer, names, torch.where(significant, mean, torch.nan), p, significant,
                      float(np.mean(accuracy)), concept_scores, random_scores,
                      torch.tensor(accuracy), alpha, adjusted, correction)
