"""Explanations over superpixels: LIME and Kernel SHAP (and the helpers anchors use).

The image is cut into superpixels (scikit-image's quickshift or SLIC through
``lime``'s wrapper, a callable, or given labels); a superpixel is switched off by
painting it with ``baseline``. LIME fits a weighted linear model to random on/off
patterns (the ``lime`` package); Kernel SHAP estimates Shapley values of the
superpixels with the Shapley kernel (``shap``'s KernelExplainer). Each pixel gets
the value of its superpixel.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from ..runtime import default_batch_size, fast_layout, inference_copy, positive_int
from . import register, resolve_target
from .perturbation import _baseline, _probs, _scores

__all__ = ["superpixels", "lime", "lime_explanations", "kernel_shap", "SEGMENTATION_DEFAULTS"]


# ----------------------------------------------------------------------------- superpixels
SEGMENTATION_DEFAULTS = {
    # tuned on the 64 x 64 shapes images: ~20-40 segments that follow object edges
    # and give the 7 x 7 watermark a segment of its own; sizes scale with the image
    "quickshift": lambda side: dict(kernel_size=2 * side / 64, max_dist=20 * side / 64, ratio=0.5),
    "slic": lambda side: dict(n_segments=64, compactness=20, start_label=0),
}


def superpixels(x: torch.Tensor, method: str = "quickshift", seed: int = 0, **options) -> torch.Tensor:
    """Superpixel labels LongTensor[N,H,W] (0..K-1 per image) with scikit-image.

    ``method`` is ``"quickshift"`` or ``"slic"`` (through ``lime``'s
    ``SegmentationAlgorithm`` wrapper); ``options`` override the defaults in
    ``SEGMENTATION_DEFAULTS`` (scikit-image's keyword names).
    """
    from lime.wrappers.scikit_image import SegmentationAlgorithm

    if x.dim() == 3:
        x = x.unsqueeze(0)
    if method not in SEGMENTATION_DEFAULTS:
        raise ValueError(f"segmentation must be one of {list(SEGMENTATION_DEFAULTS)}, a callable "
                         f"image -> labels, or a LongTensor[N,H,W] of labels; got {method!r}")
    kw = SEGMENTATION_DEFAULTS[method](min(x.shape[-2:]))
    kw.update(options)
    if method == "quickshift":
        kw["random_seed"] = seed
    seg = SegmentationAlgorithm(method, **kw)
    out = [torch.from_numpy(_relabel(seg(_to_numpy_image(im)))) for im in x]
    return torch.stack(out).to(x.device)


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Labels 0..K-1 in order of first appearance (lime wants consecutive labels)."""
    _, inv = np.unique(labels, return_inverse=True)
    return inv.reshape(labels.shape).astype(np.int64)


def _to_numpy_image(im: torch.Tensor) -> np.ndarray:
    return im.detach().permute(1, 2, 0).double().cpu().numpy()


def _segments_for(x, segmentation, seed, segment_options) -> list[np.ndarray]:
    """Per-image superpixel label arrays from a method name, a callable or given labels."""
    if isinstance(segmentation, torch.Tensor):
        seg = segmentation if segmentation.dim() == 3 else segmentation.unsqueeze(0)
        if seg.shape[0] != x.shape[0] or seg.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"segmentation labels have shape {tuple(segmentation.shape)}, "
                             f"expected [N,H,W] = {(x.shape[0], *x.shape[-2:])}")
        return [_relabel(s.cpu().numpy()) for s in seg]
    if callable(segmentation):
        return [_relabel(np.asarray(segmentation(_to_numpy_image(im)))) for im in x]
    return [s.cpu().numpy() for s in superpixels(x, segmentation, seed, **(segment_options or {}))]


def _paint(segments: np.ndarray, weights, device, dtype=torch.float32) -> torch.Tensor:
    """Heatmap [H,W]: each pixel gets the weight of its superpixel."""
    w = torch.as_tensor(np.asarray(weights, dtype=np.float64), dtype=dtype)
    return w[torch.from_numpy(segments)].to(device)


@contextlib.contextmanager
def _quiet_lime_progress():
    """lime 0.2 shows a tqdm bar for every image; silence it for the call, then restore."""
    from lime import lime_image

    original = lime_image.tqdm
    lime_image.tqdm = lambda it, *a, **k: it
    try:
        yield
    finally:
        lime_image.tqdm = original


def _image_batch_fn(model, device, dtype, target: int, batch_size: int, probs: bool = True,
                    all_classes: bool = False):
    """numpy images [B,H,W,3] -> numpy scores, evaluated ``batch_size`` at a time."""
    def fn(images):
        out = []
        with torch.no_grad():
            net = inference_copy(model)
            for s in range(0, len(images), batch_size):
                t = torch.as_tensor(np.asarray(images[s:s + batch_size]), dtype=dtype, device=device)
                y = net(fast_layout(t.permute(0, 3, 1, 2)))
                y = y.softmax(1) if probs else y
                out.append((y if all_classes else y[:, target]).double().cpu().numpy())
        return np.concatenate(out)
    return fn


# ----------------------------------------------------------------------------- LIME
@register("lime", "perturbation",
          "fit a weighted linear model on random on/off superpixel samples; a superpixel "
          "scores its coefficient (uses the lime package)",
          "Ribeiro, Singh & Guestrin 2016, \"Why Should I Trust You?\", KDD",
          cost="slow", cheap=dict(n_samples=40))
def lime(model: nn.Module, x: torch.Tensor, target=None, n_samples: int = 1000, seed: int = 0,
         segmentation="quickshift", segment_options: dict | None = None, baseline=0.0,
         kernel_width: float = 0.25, batch_size: int | None = None) -> torch.Tensor:
    """LIME for images with ``lime.lime_image.LimeImageExplainer``.

    The image is cut into superpixels (``segmentation``: "quickshift", "slic",
    a callable image -> labels or a LongTensor[N,H,W] of labels); ``n_samples``
    random on/off patterns replace the switched-off superpixels with
    ``baseline`` (a number; ``None``: each superpixel's mean colour, lime's
    default); a ridge regression weighted by the exponential kernel fits the
    target's probability. Each pixel gets the coefficient of its superpixel.
    Deterministic for a given ``seed``. Returns FloatTensor[N,H,W];
    ``lime_explanations`` also returns lime's ``ImageExplanation`` objects.
    """
    return _lime(model, x, target, n_samples, seed, segmentation, segment_options, baseline,
                 kernel_width, batch_size)[0]


def lime_explanations(model: nn.Module, x: torch.Tensor, target=None, **options):
    """``(heat [N,H,W], [lime ImageExplanation, ...])``: LIME as ``explain(...,
    method="lime")`` computes it, with lime's own explanation objects (for
    ``get_image_and_mask`` and the like). Options as for ``lime``."""
    method = lime.method
    return method.run(model, x, target, fn=lambda m, xx, t, **o: _lime(m, xx, t, **o), **options)


def _lime(model, x, target, n_samples=1000, seed=0, segmentation="quickshift", segment_options=None,
          baseline=0.0, kernel_width=0.25, batch_size=None):
    from lime.lime_image import LimeImageExplainer

    n_samples = positive_int(n_samples, "n_samples", " (LIME needs samples; try 1000)")
    batch_size = positive_int(default_batch_size(x) if batch_size is None else batch_size, "batch_size")
    target = resolve_target(model, x, target)
    segs = _segments_for(x, segmentation, seed, segment_options)
    heat, explanations = [], []
    with _quiet_lime_progress():
        for i, im in enumerate(x):
            t = int(target[i])
            explainer = LimeImageExplainer(kernel_width=kernel_width, random_state=seed)
            fn = _image_batch_fn(model, x.device, x.dtype, t, batch_size, all_classes=True)
            k = int(segs[i].max()) + 1
            exp = explainer.explain_instance(
                _to_numpy_image(im), fn, labels=(t,), top_labels=None, hide_color=baseline,
                num_features=k, num_samples=n_samples, batch_size=batch_size,
                segmentation_fn=lambda _img, s=segs[i]: s, random_seed=seed)
            weights = np.zeros(k)
            for seg_id, wgt in exp.local_exp[t]:
                weights[seg_id] = wgt
            heat.append(_paint(segs[i], weights, x.device, x.dtype))
            explanations.append(exp)
    return torch.stack(heat), explanations


# ----------------------------------------------------------------------------- Kernel SHAP
@contextlib.contextmanager
def _numpy_seed(seed: int):
    """shap's KernelExplainer samples with numpy's global generator: seed it for the
    call and put the caller's state back afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _superpixel_fill(image: torch.Tensor, segments: torch.Tensor, hide: torch.Tensor):
    """z [B,K] on/off -> images [B,3,H,W]: superpixels with z=0 take the ``hide`` image."""
    def fill(z: torch.Tensor) -> torch.Tensor:
        keep = z[:, segments]                                   # [B,H,W]
        return torch.where(keep.unsqueeze(1) > 0.5, image.unsqueeze(0), hide)
    return fill


def _hide_image(image: torch.Tensor, baseline) -> torch.Tensor:
    if baseline is None:
        raise ValueError("baseline=None (mean colour) is only supported by lime; use a number")
    return _baseline(baseline, image.unsqueeze(0)).expand_as(image.unsqueeze(0))[0]


@register("kernel_shap", "perturbation",
          "Shapley values of superpixels estimated by a weighted linear regression "
          "(uses shap's KernelExplainer)",
          "Lundberg & Lee 2017, A Unified Approach to Interpreting Model Predictions, NeurIPS",
          cost="slow", cheap=dict(n_samples=40))
def kernel_shap(model: nn.Module, x: torch.Tensor, target=None, n_samples: int = 500, seed: int = 0,
                segmentation="quickshift", segment_options: dict | None = None, baseline=0.0,
                batch_size: int | None = None, output: str = "probability", l1_reg=False) -> torch.Tensor:
    """Kernel SHAP over superpixels with ``shap.KernelExplainer``.

    A player is a superpixel; "absent" replaces it with ``baseline``. The value
    of a coalition z is the target's probability (``output="logit"``: logit) on the
    image with only z's superpixels present; the background is "all absent".
    shap samples ``n_samples`` coalitions with the Shapley kernel and solves the
    weighted regression, so the values add up to f(x) - f(all hidden)
    (efficiency). Deterministic for a given ``seed`` (numpy's global state is
    restored afterwards). Each pixel gets its superpixel's value: FloatTensor[N,H,W].
    """
    import shap

    n_samples = positive_int(n_samples, "n_samples", " (Kernel SHAP needs samples; try 500)")
    batch_size = positive_int(default_batch_size(x) if batch_size is None else batch_size, "batch_size")
    target = resolve_target(model, x, target)
    probs = _probs(output)
    segs = _segments_for(x, segmentation, seed, segment_options)
    heat = []
    for i, im in enumerate(x):
        seg = torch.from_numpy(segs[i]).to(x.device)
        k = int(seg.max()) + 1
        fill = _superpixel_fill(im, seg, _hide_image(im, baseline))
        t = target[i:i + 1]

        def value(z: np.ndarray) -> np.ndarray:
            out = []
            with torch.no_grad():
                net = inference_copy(model)
                for s in range(0, len(z), batch_size):
                    zz = torch.as_tensor(z[s:s + batch_size], device=x.device, dtype=x.dtype)
                    out.append(_scores(net, fill(zz), t.expand(len(zz)), probs).double().cpu().numpy())
            return np.concatenate(out)

        with _numpy_seed(seed):
            explainer = shap.KernelExplainer(value, np.zeros((1, k)), link="identity")
            phi = explainer.shap_values(np.ones((1, k)), nsamples=n_samples, l1_reg=l1_reg, silent=True)
        heat.append(_paint(segs[i], np.asarray(phi).reshape(-1)[:k], x.device, x.dtype))
    return torch.stack(heat)
