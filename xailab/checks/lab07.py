"""Checks for lab 07 (inversion): total variation, the inversion loop, a learned decoder.

    from xailab.checks import lab07
    lab07.check_total_variation(total_variation)   # fn(x, beta) -> Tensor[N]
    lab07.check_invert(invert)                     # fn(model, layer, image, steps, tv_weight, lr) -> [3,H,W]
    lab07.check_train_decoder(train_decoder)       # fn(decoder, feats, images, epochs, lr) -> decoder

Each check prints a verdict in words and returns the ``Report`` (truthy when passed).
"""
from __future__ import annotations

import torch

from .. import hooks, optvis
from .core import (Report, call, diagnose, relative_error, name_of as _name, finish as _done,
                   tensor_result)

SEED = 7


def _tensor(report, fn, got, shape, what):
    return tensor_result(report, fn, got, shape, what)


def check_total_variation(fn, verbose: bool = True) -> Report:
    """``fn(x, beta)``: for x [N,C,H,W], one value per image: the mean over channels and
    pixels (i < H-1, j < W-1) of ((x[c,i,j+1]-x[c,i,j])^2 + (x[c,i+1,j]-x[c,i,j])^2)^(beta/2)."""
    report = Report("check_total_variation")
    g = torch.Generator().manual_seed(SEED)
    x = torch.rand(3, 3, 12, 10, generator=g)
    for beta in (2.0, 1.0):
        got = _tensor(report, fn, call(report, fn, x, beta), (3,), "one value per image, shape [N]")
        if got is None:
            return _done(report, verbose)
        want = optvis.total_variation(x, beta)
        if relative_error(got, want) > 1e-4:
            dx = x[:, :, :-1, 1:] - x[:, :, :-1, :-1]
            dy = x[:, :, 1:, :-1] - x[:, :, :-1, :-1]
            s = (dx ** 2 + dy ** 2).pow(beta / 2)
            alts = [
                (s.flatten(1).sum(1), "you summed over pixels; take the mean (so the weight does not "
                                      "depend on the image size)"),
                ((dx ** 2 + dy ** 2).flatten(1).mean(1),
                 "beta is ignored: raise the bracket to the power beta / 2"),
                ((dx.abs() ** beta + dy.abs() ** beta).flatten(1).mean(1),
                 "you took |dx|^beta + |dy|^beta; the paper takes (dx^2 + dy^2)^(beta/2)"),
                ((x[:, :, :, 1:] - x[:, :, :, :-1]).pow(2).flatten(1).mean(1)
                 + (x[:, :, 1:] - x[:, :, :-1]).pow(2).flatten(1).mean(1),
                 "you averaged the horizontal and vertical differences separately; combine them "
                 "per pixel on the common (H-1) x (W-1) grid, then apply the power"),
            ]
            if diagnose(report, got, [(alt, f"beta = {beta:g}: {hint}") for alt, hint in alts]):
                return _done(report, verbose)
        if not report.compare(f"beta = {beta:g}, three random images", got, want):
            return _done(report, verbose)
    flat = call(report, fn, torch.full((1, 3, 8, 8), 0.4), 2.0)
    if flat is not None and float(torch.as_tensor(flat).abs().max()) > 1e-6:
        report.fail("a constant image must have total variation 0")
    return _done(report, verbose)


def check_invert(fn, verbose: bool = True) -> Report:
    """``fn(model, layer, image, steps, tv_weight, lr)`` must return [3,H,W] in [0,1]
    whose ``layer`` features are within 10% (relative error) of the image's, for
    features.block1.conv2 after 200 steps, leaving the model unchanged."""
    from .. import models
    from ..data import shapes
    report = Report("check_invert")
    model = models.load("shapesnet")
    x = shapes("test", 1, seed=3).images()[0]
    layer = "features.block1.conv2"
    steps = optvis.resolve_steps(200, 200)
    before, kept = hooks.Snapshot.of(model), x.clone()
    got = _tensor(report, fn, call(report, fn, model, layer, x, steps, 0.1, 0.05), x.shape,
                  "an image [3,H,W]")
    if got is None:
        return _done(report, verbose)
    changed = before.diff(model)
    if changed:
        report.fail(f"{_name(fn)} changed the model ({'; '.join(changed)}); freeze with "
                    "requires_grad_(False) inside hooks.preserved(model), or optimise only the image")
        return _done(report, verbose)
    if not torch.equal(x, kept):
        report.fail(f"{_name(fn)} changed the image it was given")
        return _done(report, verbose)
    if got.min() < 0 or got.max() > 1:
        report.fail("the reconstruction leaves [0, 1]: clamp after each step")
        return _done(report, verbose)
    if relative_error(got, x) < 1e-6:
        report.fail("you returned the original image; start from noise and optimise")
        return _done(report, verbose)
    err = optvis.feature_error(model, layer, got, x)
    pix = float((got - x).norm() / x.norm())
    limit = 0.1 if steps >= 200 else 0.5
    (report.ok if err < limit else report.fail)(
        f"{layer}, {steps} steps: relative feature error {err:.3f} (want < {limit}); pixel error {pix:.3f}")
    return _done(report, verbose)


def check_train_decoder(fn, verbose: bool = True) -> Report:
    """``fn(decoder, feats, images, epochs, lr)`` must train ``decoder`` (feats -> images,
    mean squared error) and return it; on held-out images it must beat the mean image."""
    from .. import models
    from ..data import shapes
    report = Report("check_train_decoder")
    model = models.load("shapesnet")
    layer = "features.block1"
    train = shapes("train", 600, seed=5).images()
    held = shapes("test", 100, seed=6).images()
    feats = optvis.features(model, layer, train)
    torch.manual_seed(SEED)
    dec = optvis.Decoder(feats.shape[1], feats.shape[-1], 64, width=32)
    start = {k: v.clone() for k, v in dec.state_dict().items()}
    got = call(report, fn, dec, feats, train, 2, 3e-3)
    if not report.passed:
        return _done(report, verbose)
    if got is None:
        report.fail(f"{_name(fn)} returned None: return the trained decoder")
        return _done(report, verbose)
    if not isinstance(got, torch.nn.Module):
        report.fail(f"{_name(fn)} returned a {type(got).__name__}; return the decoder (an nn.Module)")
        return _done(report, verbose)
    if all(torch.equal(start[k], v) for k, v in got.state_dict().items()):
        report.fail("the decoder's weights did not change: call optimizer.step() after loss.backward()")
        return _done(report, verbose)
    got.eval()
    with torch.no_grad():
        rec = got(optvis.features(model, layer, held))
    mse = float((rec - held).pow(2).mean())
    base = float((train.mean(0, keepdim=True) - held).pow(2).mean())
    (report.ok if mse < 0.8 * base else report.fail)(
        f"held-out pixel MSE {mse:.4f} vs {base:.4f} for the mean training image "
        f"(want below 80% of it)")
    return _done(report, verbose)
