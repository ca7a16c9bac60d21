"""CAMs whose channel weights are measured by extra forward passes, not gradients:
Score-CAM (the class score of the image masked by each channel) and Ablation-CAM (the
drop of the class score when each channel is switched off). Both run on the shared
CAM core of ``xailab.attribution.cam`` and batch their forward passes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import hooks
from ..runtime import batched, default_batch_size, fast_layout, inference_copy, positive_int
from . import register
from .cam import CAM, LayerPass, finish, layer_pass, weighted_sum


# ---------------------------------------------------------------- Score-CAM (gradient-free)

def scorecam_scores(model, x, a, t, batch_size=None, align_corners=False, probs=False):
    """Class score of each image masked by each of its normalised, upsampled channels:
    [N,C], logits (``probs=True``: softmax probabilities). Masks are built batch by batch (never all N*C images at once); channels
    that are constant give an all-zero mask and share one forward pass."""
    n, c = a.shape[:2]
    batch_size = default_batch_size(x) if batch_size is None else positive_int(batch_size, "batch_size")
    lo, hi = a.amin((2, 3)), a.amax((2, 3))
    scores = torch.empty(n, c, device=x.device, dtype=x.dtype)
    flat = (hi > lo).reshape(-1)
    with torch.no_grad():
        net = inference_copy(model)
        if not bool(flat.all()):
            zero = net(torch.zeros_like(x[:1]))
            zero = (zero.softmax(1) if probs else zero)[0]
            scores[~(hi > lo)] = zero[t[:, None].expand(n, c)[~(hi > lo)]]
        pairs = torch.nonzero(flat).squeeze(1)
        for s in range(0, len(pairs), batch_size):
            idx = pairs[s:s + batch_size]
            i, k = idx // c, idx % c
            m = F.interpolate(a[i, k][:, None], size=x.shape[-2:], mode="bilinear", align_corners=align_corners)
            mlo, mhi = m.amin((2, 3), keepdim=True), m.amax((2, 3), keepdim=True)
            m = (m - mlo) / (mhi - mlo).clamp_min(1e-12)
            out = net(fast_layout(x[i] * m))
            out = out.softmax(1) if probs else out
            scores[i, k] = out.gather(1, t[i][:, None])[:, 0]
    return scores


SCORECAM_OUTPUTS = ("logit", "probability")


def scorecam_weights(scores: torch.Tensor, constant: torch.Tensor, output: str = "logit") -> torch.Tensor:
    """Channel weights [N,C] from the masked images' class outputs [N,C].

    ``output="logit"``: ``scores`` are class logits and the weights their softmax over the
    channels, the paper's Algorithm 1. The paper subtracts a baseline image's score first;
    that is one number per image, and a softmax does not change when the same number is
    subtracted from all its inputs, so the baseline has no effect and is left out (as in
    pytorch-grad-cam). ``output="probability"``: ``scores`` are class probabilities and
    are the weights themselves, as in the authors' released code, which skips
    ``constant`` channels (their mask is all zero), so those get weight 0."""
    if output == "logit":
        return torch.softmax(scores, dim=1)
    return scores.masked_fill(constant, 0.0)


@register("scorecam", "cam", "gradient-free: each channel weighted by the class score of the image "
          "masked with that channel (softmax over channels; output='probability': its class probability)",
          "Wang, Wang, Du, Yang, Zhang, Ding, Mardziel & Hu 2020, CVPR Workshops", cost="slow", **CAM)
def scorecam(model, x, target=None, layer=None, upsample=True, relu=True, batch_size=None,
             align_corners=False, output="logit"):
    """L = ReLU(sum_k w_k A_k) with w_k from the class output of x * s(Up(A_k)), s = min-max
    scaling to [0, 1]. Two published weightings, chosen by ``output``:

    * ``"logit"`` (default): w = softmax_k(f^c(x * s(Up(A_k)))), the paper's Algorithm 1
      (its baseline subtraction cancels in the softmax) and pytorch-grad-cam's ScoreCAM;
    * ``"probability"``: w_k = softmax(f(x * s(Up(A_k))))_c, the class probability of each
      masked image, as in the authors' released code (no softmax over channels; constant
      channels are skipped).

    ``batch_size`` masked images go through the model at once (default: 32 on the CPU,
    256 on an accelerator). There are C masked images per input image; channels that are
    constant share one pass.
    ``align_corners`` says how the masks are upsampled: ``False`` as in the authors'
    code, ``True`` as in pytorch-grad-cam (the weights differ slightly)."""
    if output not in SCORECAM_OUTPUTS:
        raise ValueError(f"output must be 'logit' (the paper: softmax over the channels of the class "
                         f"logits) or 'probability' (the authors' code: the class probability of each "
                         f"masked image), got {output!r}")
    p = layer_pass(model, x, target, layer, gradients=False)
    a = p.activations
    scores = scorecam_scores(model, x, a, p.target, batch_size, align_corners, probs=output == "probability")
    w = scorecam_weights(scores, a.amin((2, 3)) == a.amax((2, 3)), output)
    return finish(weighted_sum(a, w, relu), x, upsample)


# ---------------------------------------------------------------- Ablation-CAM (gradient-free)

class _LeafAt(torch.fx.Tracer):
    """Traces through every module except ``leaf`` (kept as one call)."""
    def __init__(self, leaf: str):
        super().__init__()
        self.leaf = leaf

    def is_leaf_module(self, m, qualname):
        return qualname == self.leaf or super().is_leaf_module(m, qualname)


def layer_tail(model: nn.Module, layer: str, root: str = ""):
    """The part of ``model.get_submodule(root)`` after ``layer`` as a module (layer output ->
    output), or None when it cannot be cut there (not traceable by torch.fx, the layer is
    called twice, or a later part also reads something computed before the layer)."""
    top = model.get_submodule(root) if root else model
    inner = layer[len(root) + 1:] if root else layer
    try:
        graph = _LeafAt(inner).trace(top)
    except Exception:                         # data-dependent control flow, ...
        return None
    tail = torch.fx.GraphModule(top, graph)
    graph = tail.graph
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target == inner]
    if len(calls) != 1:
        return None
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    with graph.inserting_before(inputs[0]):
        calls[0].replace_all_uses_with(graph.placeholder("features"))
    graph.eliminate_dead_code()
    if any(n.users for n in inputs):
        return None
    for n in inputs:
        graph.erase_node(n)
    tail.recompile()
    return tail.eval()


def _tail_for(model, name, a, logits):
    """A module computing the logits from the layer's activations: the model itself cut at
    the layer, or a submodule on the layer's path whose output is the logits (checked
    numerically, e.g. a wrapper that only normalises); None when neither works."""
    parts = name.split(".")
    for root in [""] + [".".join(parts[:i]) for i in range(1, len(parts))]:
        tail = layer_tail(model, name, root)
        if tail is not None and torch.allclose(tail(a[:1]), logits[:1], rtol=1e-4, atol=1e-5):
            return tail
    return None


def ablation_scores(model, x, p: LayerPass, batch_size=None):
    """Target score of each image with each channel of the layer set to zero: [N,C].
    Only the part of the model after the layer runs when it can be cut out; otherwise a
    forward hook replaces the layer's output and the whole model runs. Batches of
    ``batch_size`` (image, channel) pairs."""
    a, t = p.activations, p.target
    n, c = a.shape[:2]
    batch_size = default_batch_size(x) if batch_size is None else positive_int(batch_size, "batch_size")
    pairs = torch.arange(n * c, device=a.device)
    scores = torch.empty(n, c, device=a.device, dtype=a.dtype)
    replaced = {}
    with torch.no_grad(), hooks.out_of_place_relus(model):
        tail = _tail_for(model, p.layer, a, p.logits)
        run = tail if tail is not None else model
        with hooks.forward_hooks(model, {} if tail else {p.layer: lambda m, i, o: replaced["a"]}):
            for s in batched(len(pairs), batch_size):
                i, k = pairs[s] // c, pairs[s] % c
                ablated = a[i].clone()
                ablated[torch.arange(len(i)), k] = 0
                replaced["a"] = ablated
                out = run(ablated if tail is not None else x[i])
                scores[i, k] = out.gather(1, t[i][:, None])[:, 0]
    return scores


@register("ablationcam", "cam", "gradient-free: each channel weighted by the relative drop of the "
          "class score when that channel is set to zero",
          "Desai & Ramaswamy 2020, WACV", cost="slow", **CAM)
def ablationcam(model, x, target=None, layer=None, upsample=True, relu=True, batch_size=None):
    """L = ReLU(sum_k w_k A_k), w_k = (y^c - y^c_k) / y^c with y^c_k the class score when
    channel k of the layer is zero. C extra passes per image, but only through the layers
    after ``layer`` when the model can be cut there (``batch_size`` pairs per pass)."""
    p = layer_pass(model, x, target, layer, gradients=False)
    y = p.logits.gather(1, p.target[:, None])
    w = (y - ablation_scores(model, x, p, batch_size)) / y
    return finish(weighted_sum(p.activations, w, relu), x, upsample)
