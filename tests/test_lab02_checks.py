"""Lab 02's checks: the solution passes; zeros, random values, the library's own code,
the input returned unchanged and the commonest mistakes fail, each named in words."""
import pytest
import torch
import torch.nn.functional as F

from labtools import fails_saying, solution_function
from xailab import hooks, optvis, viz
from xailab.checks import core, lab02

NB = "02_hooks.ipynb"


@pytest.fixture(autouse=True)
def fresh():
    core.reset()
    yield
    core.reset()


# ----------------------------------------------------------------------------- recorder
def _recorder(copy=True, finally_remove=True, remove=True):
    def record_activation(model, layer, x):
        module = hooks.get_layer(model, layer)
        stored = {}
        keep = (lambda m, a, out: stored.update(out=out.detach().clone())) if copy else \
            (lambda m, a, out: stored.update(out=out.detach()))
        handle = module.register_forward_hook(keep)
        if finally_remove:
            try:
                with torch.no_grad():
                    model(x)
            finally:
                handle.remove()
        else:
            with torch.no_grad():
                model(x)
            if remove:
                handle.remove()
        return stored["out"]
    return record_activation


def test_recorder_solution_passes(capsys):
    report = lab02.check_recorder(solution_function(NB, "record_activation"))
    assert report.passed and "PASSED" in capsys.readouterr().out
    assert lab02.check_recorder(_recorder(), verbose=False).passed


def test_recorder_rejects_degenerate_answers():
    def shape_of(model, layer, x):
        return _recorder()(model, layer, x)

    fails_saying(lab02.check_recorder, lambda m, layer, x: torch.zeros_like(shape_of(m, layer, x)), "all zeros")
    fails_saying(lab02.check_recorder, lambda m, layer, x: torch.rand_like(shape_of(m, layer, x)), "unrelated")
    fails_saying(lab02.check_recorder, lambda m, layer, x: x, "returned the input x unchanged")
    fails_saying(lab02.check_recorder, lambda m, layer, x: m(x).detach(), "the model's output")
    fails_saying(lab02.check_recorder, lambda m, layer, x: None, "forget `return`")


def test_recorder_refuses_the_library():
    def library(model, layer, x):
        with hooks.record(model, layer) as rec, torch.no_grad():
            model(x)
        return rec.activations[layer]

    def forward_hooks(model, layer, x):
        stored = {}
        with hooks.forward_hooks(model, {layer: lambda m, a, o: stored.update(out=o.detach().clone())}):
            with torch.no_grad():
                model(x)
        return stored["out"]

    fails_saying(lab02.check_recorder, library, "write this one yourself", "hooks.record")
    fails_saying(lab02.check_recorder, lambda m, layer, x: optvis.features(m, layer, x), "write this one yourself")
    fails_saying(lab02.check_recorder, lambda m, layer, x: lab02._reference_activation(m, layer, x),
                 "write this one yourself")
    fails_saying(lab02.check_recorder, forward_hooks, "write this one yourself")


def test_recorder_names_the_commonest_mistakes():
    fails_saying(lab02.check_recorder, _recorder(finally_remove=False), "finally")
    fails_saying(lab02.check_recorder, _recorder(finally_remove=False, remove=False), "hook")
    fails_saying(lab02.check_recorder, _recorder(copy=False), "in-place")

    def attached(model, layer, x):                       # keeps the autograd graph
        stored = {}
        handle = hooks.get_layer(model, layer).register_forward_hook(lambda m, a, o: stored.update(out=o))
        try:
            model(x)
        finally:
            handle.remove()
        return stored["out"]
    fails_saying(lab02.check_recorder, attached, "requires_grad")


# ----------------------------------------------------------------------------- heat map
def _heatmap(a, size, per_image=True, eps=1e-8, upsample_first=True):
    s = a.sum(1)
    if upsample_first:
        s = F.interpolate(s[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    dims = (1, 2) if per_image else (0, 1, 2)
    lo, hi = s.amin(dims, keepdim=True), s.amax(dims, keepdim=True)
    out = (s - lo) / (hi - lo + eps)
    if not upsample_first:
        out = F.interpolate(out[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return out


def test_heatmap_solution_passes():
    assert lab02.check_heatmap(solution_function(NB, "layer_heatmap"), verbose=False).passed
    assert lab02.check_heatmap(_heatmap, verbose=False).passed

    def upsample_then_sum(a, size):                      # summing and upsampling commute
        up = F.interpolate(a, size=(size, size), mode="bilinear", align_corners=False).sum(1)
        lo, hi = up.amin((1, 2), keepdim=True), up.amax((1, 2), keepdim=True)
        return (up - lo) / (hi - lo).clamp_min(1e-8)
    assert lab02.check_heatmap(upsample_then_sum, verbose=False).passed


def test_heatmap_rejects_degenerate_answers():
    fails_saying(lab02.check_heatmap, lambda a, size: torch.zeros(a.shape[0], size, size), "all zeros")
    fails_saying(lab02.check_heatmap, lambda a, size: torch.rand(a.shape[0], size, size), "unrelated")
    fails_saying(lab02.check_heatmap, lambda a, size: a, "activation unchanged")
    fails_saying(lab02.check_heatmap, lambda a, size: a.sum(1), "upsample it")
    fails_saying(lab02.check_heatmap, viz.heatmap, "write this one yourself", "viz.heatmap")
    fails_saying(lab02.check_heatmap, lambda a, size: viz.normalize(viz.upsample(a.sum(1), size)),
                 "write this one yourself")


def test_heatmap_names_the_commonest_mistakes():
    fails_saying(lab02.check_heatmap, lambda a, size: _heatmap(a, size, per_image=False), "each image")
    fails_saying(lab02.check_heatmap, lambda a, size: _heatmap(a, size, eps=0.0), "nan", "epsilon")
    fails_saying(lab02.check_heatmap, lambda a, size: _heatmap(a, size, upsample_first=False), "upsample first")
    fails_saying(lab02.check_heatmap,
                 lambda a, size: F.interpolate(a.sum(1)[:, None], size=(size, size), mode="bilinear")[:, 0],
                 "not scaled")

    def in_place(a, size):
        a *= 2                   # the result is the same, but the caller's tensor changed
        return _heatmap(a, size)
    fails_saying(lab02.check_heatmap, in_place, "changed the activation")

    def nearest(a, size):
        s = F.interpolate(a.sum(1)[:, None], size=(size, size), mode="nearest")[:, 0]
        lo, hi = s.amin((1, 2), keepdim=True), s.amax((1, 2), keepdim=True)
        return (s - lo) / (hi - lo + 1e-8)
    fails_saying(lab02.check_heatmap, nearest, "bilinear")
    fails_saying(lab02.check_heatmap, lambda a, size: F.interpolate(a, size=(size, size), mode="bilinear"),
                 "sum over the channel")
