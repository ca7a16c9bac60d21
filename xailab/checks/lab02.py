"""Checks for lab 02 (hooks): an activation recorder and a layer heat map.

    from xailab.checks import lab02
    lab02.check_recorder(record_activation)    # fn(model, layer, x) -> activation
    lab02.check_heatmap(layer_heatmap)         # fn(activation, size) -> [N,H,W] in [0, 1]

Each check runs the student's function while the library code that answers the exercise
refuses to run (``hooks.record`` and ``hooks.forward_hooks``; ``viz.heatmap`` and its
building blocks ``viz.upsample`` and ``viz.normalize``), compares it with a reference
computed outside that block, names the commonest mistakes, prints a verdict in words and
returns the ``Report`` (truthy when passed).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import hooks, viz
from ..solving import forbidding
from .core import (Report, call, degenerate, diagnose, relative_error, name_of as _name, finish as _done,
                   require_tensor)

SEED = 2
RECORDER = ("hooks.record", "hooks.forward_hooks")
HEATMAP = ("viz.heatmap", "viz.upsample", "viz.normalize")


def _images(n: int = 4) -> torch.Tensor:
    from ..data import shapes
    return shapes("test", n, seed=SEED).images()


def _reference_activation(model, layer, x) -> torch.Tensor:
    with hooks.record(model, layer) as rec, torch.no_grad():
        model(x)
    return rec.activations[layer]


def _leftovers(report: Report, before: hooks.Snapshot, model, when: str) -> bool:
    changed = before.diff(model)
    if not changed:
        return True
    words = "; ".join(changed)
    hint = (" Keep the handle that registering a forward hook returns and call handle.remove() "
            "in a `finally:` block.") if "hooks" in words else ""
    report.fail(f"the model was not left as it was {when} ({words}).{hint}")
    return False


def _inplace_net() -> nn.Module:
    """conv -> in-place ReLU: the ReLU overwrites the conv's output tensor."""
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return net


def _same_activation(report: Report, got, want, x, logits, layer: str) -> bool:
    """Compare a recorded activation with the reference; name what came back instead."""
    if tuple(got.shape) == tuple(x.shape) and torch.equal(got.detach().float(), x):
        report.fail(f"{layer}: you returned the input x unchanged; return what the layer outputs "
                    "(the hook's `output` argument)")
        return False
    if tuple(got.shape) == tuple(logits.shape) and relative_error(got.detach(), logits) < 1e-4:
        report.fail(f"{layer}: you returned the model's output (the class scores); return what the "
                    "layer named `layer` outputs, caught by a forward hook on that layer")
        return False
    if tuple(got.shape) == tuple(want.shape) and degenerate(report, got.detach().float(), want, inputs=()):
        return False
    return report.compare(f"{layer} activation", got, want)


def check_recorder(fn, verbose: bool = True) -> Report:
    """``fn(model, layer, x)`` must run ``model(x)`` and return a detached copy of
    the output of the layer named ``layer``, leaving no hook behind."""
    from .. import models

    report = Report("check_recorder", exercise="record_activation", forbid=RECORDER)
    model = models.load("shapesnet")
    x = _images(4)
    with torch.no_grad():
        logits = model(x)

    # 1. the right values at two depths, nothing left behind
    for layer in ("features.block1", "features.block3"):
        before = hooks.Snapshot.of(model)
        got = call(report, fn, model, layer, x)
        if not report.passed:
            break
        got = require_tensor(report, fn, got, "an activation tensor (a torch.Tensor)")
        if got is None:
            break
        want = _reference_activation(model, layer, x)
        if not _same_activation(report, got, want, x, logits, layer):
            break
        if got.requires_grad:
            report.fail("the result still carries the autograd graph (requires_grad=True): "
                        "return output.detach().clone(), or run the model under torch.no_grad()")
            break
        if not _leftovers(report, before, model, f"after recording {layer}"):
            break
    if not report.passed:
        return _done(report, verbose)

    # 2. an error in the forward pass must not leave the hook behind
    before = hooks.Snapshot.of(model)
    try:
        with forbidding(report.forbid):
            fn(model, "features.block2", x[:, :2])   # two channels: the model raises
    except Exception:  # noqa: BLE001 - the error is expected
        pass
    if _leftovers(report, before, model, "when the forward pass raised an error"):
        report.ok("no hook left behind, even when the forward pass raises")
    else:
        return _done(report, verbose)

    # 3. a copy, not a view an in-place ReLU overwrites afterwards
    net = _inplace_net()
    xs = x[:1, :, :16, :16]
    got = call(report, fn, net, "0", xs)
    got = require_tensor(report, fn, got, "an activation tensor (a torch.Tensor)") if report.passed else None
    if got is not None:
        want = _reference_activation(net, "0", xs)
        if got.shape == want.shape and float(want.min()) < 0 <= float(got.min()) \
                and relative_error(got, want.clamp_min(0)) < 1e-5:
            report.fail("on a conv followed by ReLU(inplace=True) you returned the values after the "
                        "ReLU: the in-place ReLU overwrote the tensor you kept. Store output.detach().clone()")
        else:
            report.compare("conv output when an in-place ReLU follows", got, want)
    if not report.passed:
        return _done(report, verbose)

    # 4. any architecture
    net = models.load_torchvision("resnet18", num_classes=6)
    got = call(report, fn, net, "net.layer2", x[:2])
    got = require_tensor(report, fn, got, "an activation tensor (a torch.Tensor)") if report.passed else None
    if got is not None:
        report.compare("torchvision resnet18 net.layer2 activation", got,
                       _reference_activation(net, "net.layer2", x[:2]))
    return _done(report, verbose)


def _wrong_shape(report: Report, got, act, want) -> None:
    """Name what a heat map of the wrong shape is."""
    n, c, h, w = act.shape
    size = tuple(want.shape[-2:])
    if tuple(got.shape) == tuple(act.shape):
        report.fail(f"you returned a tensor shaped like the activation {tuple(act.shape)}"
                    + (" (the activation unchanged)" if torch.equal(got, act.float()) else "")
                    + f": one map per image is expected, {tuple(want.shape)}: sum over the channels")
    elif got.dim() == 4 and got.shape[0] == n and got.shape[1] == c:
        report.fail(f"shape {tuple(got.shape)}: one map per image is expected, {tuple(want.shape)}: "
                    "sum over the channel dimension")
    elif tuple(got.shape) == (n, h, w):
        report.fail(f"shape {tuple(got.shape)}: the summed map is still at the layer's resolution; "
                    f"upsample it to {size[0]} x {size[1]}")
    elif got.dim() == 4 and tuple(got.shape[-2:]) == size and got.shape[1] == 1:
        report.fail(f"shape {tuple(got.shape)}: drop the channel dimension you added for the "
                    f"upsampling; return {tuple(want.shape)}")
    else:
        report.fail(f"shape {tuple(got.shape)}, expected {tuple(want.shape)} (one {size[0]} x {size[1]} map per image)")


def check_heatmap(fn, verbose: bool = True) -> Report:
    """``fn(activation, size)`` must sum the feature maps over channels, upsample
    bilinearly to ``size`` x ``size`` and scale each map to [0, 1]."""
    from .. import models

    report = Report("check_heatmap", exercise="layer_heatmap", forbid=HEATMAP)
    model = models.load("shapesnet")
    x = _images(4)
    cases = [("features.block3", 64), ("features.block1", 64), ("features.block2", 40)]
    for layer, size in cases:
        act = _reference_activation(model, layer, x)
        kept = act.clone()
        got = call(report, fn, act, size)
        got = require_tensor(report, fn, got, "heat maps [N,H,W] (a torch.Tensor)") if report.passed else None
        if got is None:
            break
        if not torch.equal(act, kept):
            report.fail(f"{_name(fn)} changed the activation it was given (an in-place operation); "
                        "work on a copy or use out-of-place operations")
            break
        want = viz.heatmap(kept, size)
        got = got.detach().float().cpu()
        if tuple(got.shape) == tuple(want.shape) and torch.isnan(got).any():
            report.fail("your maps contain NaN: guard the division by (max - min)")
            break
        if tuple(got.shape) != tuple(want.shape):
            _wrong_shape(report, got, kept, want)
            break
        if degenerate(report, got, want):
            break
        if report.compare(f"{layer} heat map at {size}x{size}", got, want):
            continue
        hints = [
            (viz.upsample(viz.normalize(viz.summed_map(kept)), size),
             "you scaled to [0, 1] before upsampling; upsample first, then scale"),
            ((lambda s: (s - s.min()) / (s.max() - s.min()))(viz.upsample(viz.summed_map(kept), size)),
             "you scaled all maps together; scale each image's map on its own (min and max over H, W)"),
            (viz.normalize(torch.nn.functional.interpolate(viz.summed_map(kept)[:, None], size=(size, size),
                                                           mode="nearest")[:, 0]),
             "use mode='bilinear' (with align_corners=False) for the upsampling"),
            (viz.normalize(torch.nn.functional.interpolate(viz.summed_map(kept)[:, None], size=(size, size),
                                                           mode="bilinear", align_corners=True)[:, 0]),
             "use align_corners=False, the default of F.interpolate"),
            (viz.upsample(viz.summed_map(kept), size),
             "the maps are not scaled: map each image's values to [0, 1] (minus its minimum, divided by "
             "its range)"),
            ((lambda s: s / s.amax((1, 2), keepdim=True))(viz.upsample(viz.summed_map(kept), size)),
             "dividing by the maximum is not enough: subtract each map's minimum first, then divide by "
             "its range (max - min)"),
        ]
        if not diagnose(report, got, hints):
            lo, hi = float(got.amin()), float(got.amax())
            if lo < -1e-6 or hi > 1 + 1e-6:
                report.fail(f"values range over [{lo:.3g}, {hi:.3g}]; each map should span [0, 1]")
        break
    if not report.passed:
        return _done(report, verbose)

    # a layer that is silent everywhere: zeros, not NaN
    flat = torch.zeros(2, 8, 4, 4)
    got = call(report, fn, flat, 16)
    got = require_tensor(report, fn, got, "heat maps [N,H,W] (a torch.Tensor)") if report.passed else None
    if got is not None:
        if tuple(got.shape) == (2, 16, 16) and torch.isnan(got.detach().float()).any():
            report.fail("a constant map (a silent layer) gives NaN: divide by (max - min) plus a small "
                        "epsilon, or clamp it, so that a flat map becomes all zeros")
        else:
            report.compare("a silent layer (all zeros) gives all-zero maps", got, torch.zeros(2, 16, 16))
    return _done(report, verbose)
