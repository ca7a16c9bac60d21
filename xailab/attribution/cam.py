"""Class activation maps: CAM, Grad-CAM, Grad-CAM++, HiResCAM, XGrad-CAM, LayerCAM,
Eigen-CAM, Score-CAM, Ablation-CAM, guided Grad-CAM.

Every method here shares one core, ``layer_pass``: a forward pass that records
the activations ``A`` [N,C,h,w] of one spatial layer and, when asked, the
gradient ``G`` of the target class score with respect to them. A method then
only says how to weight the channels:

=============  ==========================================================
cam            w_k = fc weight of the class (needs conv -> GAP -> linear)
gradcam        w_k = mean over positions of G_k, then ReLU of the sum
gradcam_pp     w_k = sum over positions of alpha_k(ij) * ReLU(G_k(ij))
hirescam       no channel weight: ReLU(sum_k G_k * A_k), element-wise
xgradcam       w_k = sum over positions of G_k * A_k / sum of A_k
layercam       no channel weight: ReLU(sum_k ReLU(G_k) * A_k), element-wise
eigencam       no class: the first principal component of A (per image)
scorecam       w_k = softmax over k of the class score of x * mask_k
ablationcam    w_k = relative drop of the class score when A_k is set to 0
=============  ==========================================================

Score-CAM and Ablation-CAM, whose weights come from extra forward passes, live in
``xailab.attribution.scored_cam`` on the same core. ``guided_gradcam`` multiplies
guided backprop by the upsampled Grad-CAM map. Tests
compare every method with Captum (``LayerGradCam(relu_attributions=True)``,
``GuidedGradCam``) and pytorch-grad-cam (GradCAM, GradCAMPlusPlus with ``eps=1e-6``,
HiResCAM, ScoreCAM with ``align_corners=True``, XGradCAM, LayerCAM, EigenCAM,
AblationCAM) and torch-cam (XGradCAM, LayerCAM).

``layer=`` picks any layer with a spatial output (default ``model.default_layer``
or the last spatial layer found automatically); ``upsample=False`` returns the
map at that layer's resolution (unnormalised, like Captum's
``LayerGradCam(relu_attributions=True)``), otherwise it is bilinearly
upsampled to the input size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import hooks
from ..solving import solves
from . import register, resolve_target

CAM = dict(layer=True)                  # every method here takes layer= and returns [N,H,W]


class CAMNotApplicableError(ValueError):
    """CAM was asked for on a model whose head is not global average pooling + one linear layer."""


@dataclass
class LayerPass:
    """What the shared forward/backward pass returns."""
    layer: str
    activations: torch.Tensor            # A: [N,C,h,w], detached
    gradients: torch.Tensor | None       # G = d score / d A: [N,C,h,w] or None
    logits: torch.Tensor                 # [N,K], detached
    target: torch.Tensor                 # LongTensor[N]


def resolve_layer(model: nn.Module, layer=None) -> str:
    """The layer's name: ``layer`` itself, ``model.default_layer``, or the last spatial layer."""
    if layer is None:
        layer = getattr(model, "default_layer", None) or hooks.last_spatial_layer(model)
    if isinstance(layer, nn.Module):
        for name, m in model.named_modules():
            if m is layer and name:
                return name
        raise ValueError("layer is a module that is not part of the model; pass its name "
                         "(see xailab.hooks.list_layers(model))")
    hooks.get_layer(model, layer)   # unknown name: raises, listing close matches
    return layer


@solves("cam.layer_pass")
def layer_pass(model: nn.Module, x: torch.Tensor, target=None, layer=None,
               gradients: bool = True) -> LayerPass:
    """One forward pass recording layer ``layer``; with ``gradients`` also the gradient of
    the summed target scores with respect to it (images do not interact in eval mode,
    so each image gets the gradient of its own score). Parameter ``.grad`` is untouched:
    the backward pass stops at the layer."""
    name = resolve_layer(model, layer)
    t = None if target is None else resolve_target(model, x, target)
    with hooks.out_of_place_relus(model), hooks.record(model, name, detach=False) as rec:
        with torch.enable_grad() if gradients else torch.no_grad():
            # a leaf input that requires grad makes A part of the graph even when every
            # parameter is frozen; the backward pass below still stops at A
            xin = x.detach().requires_grad_(True) if gradients else x
            logits = model(xin)
            if name not in rec.activations:
                raise RuntimeError(f"layer {name!r} was not used in the forward pass; "
                                   "choose a layer the model actually calls")
            a = rec.activations[name]
            if a.dim() != 4 or a.shape[-1] * a.shape[-2] < 2:
                raise ValueError(f"layer {name!r} outputs shape {tuple(a.shape)}, but CAM methods need "
                                 f"a spatial feature map [N,C,h,w]; choose one of the last spatial "
                                 f"layers, e.g. {hooks.spatial_layers(model)[-3:]}")
            if t is None:
                t = logits.detach().argmax(1)
            g = None
            if gradients:
                score = logits.gather(1, t[:, None]).sum()
                (g,) = torch.autograd.grad(score, a)
    return LayerPass(name, a.detach(), g, logits.detach(), t)


@solves("cam.weighted_sum")
def weighted_sum(a: torch.Tensor, w: torch.Tensor, relu: bool = True) -> torch.Tensor:
    """sum_k w_k A_k for channel weights w [N,C] (or element-wise weights [N,C,h,w])."""
    cam = (a * (w[:, :, None, None] if w.dim() == 2 else w)).sum(1)
    return cam.clamp_min(0) if relu else cam


def finish(cam: torch.Tensor, x: torch.Tensor, upsample: bool = True) -> torch.Tensor:
    """[N,h,w] -> [N,H,W] by bilinear interpolation (``upsample=False``: unchanged)."""
    if not upsample or cam.shape[-2:] == x.shape[-2:]:
        return cam
    return F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


# ---------------------------------------------------------------- CAM (Zhou et al. 2016)

@solves("cam.gap_linear_weights")
def gap_linear_weights(model: nn.Module, p: LayerPass) -> torch.Tensor:
    """The weight matrix W [K,C] for which the model's output equals W GAP(A) + b.

    The check is numerical, so it holds for any architecture: every ``nn.Linear``
    with C inputs and K outputs is tried on the channel means of the recorded
    activations and must reproduce the model's logits. Raises
    ``CAMNotApplicableError`` (saying why) when none does.
    """
    a, logits = p.activations, p.logits
    c, k = a.shape[1], logits.shape[1]
    pooled = a.mean((2, 3))
    tol = 1e-4 * (1 + float(logits.abs().max()))
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    fits = [(n, m) for n, m in linears if m.in_features == c and m.out_features == k]
    for _, m in fits:
        if torch.allclose(F.linear(pooled, m.weight, m.bias), logits, rtol=1e-4, atol=tol):
            return m.weight.detach()
    if fits:
        why = (f"a linear layer ({', '.join(n for n, _ in fits)}) has the right shape, but applied to the "
               f"channel averages of {p.layer!r} it does not reproduce the model's output: something "
               f"sits between {p.layer!r} and the pooling (is it the last spatial layer?)")
    else:
        heads = ", ".join(f"{n} ({m.in_features}->{m.out_features})" for n, m in linears) or "none"
        why = (f"no linear layer maps the {c} channel averages of {p.layer!r} to the {k} class scores "
               f"(linear layers: {heads}); the head is not global average pooling + one linear layer")
    raise CAMNotApplicableError(
        f"CAM does not apply to {type(model).__name__} at layer {p.layer!r}: {why}. CAM reads the class "
        "weights of a linear layer that sits directly on globally average-pooled feature maps, so a class "
        "score must be a weighted sum of channel means. Use method='gradcam', which needs no particular "
        "head and equals CAM up to a positive factor where CAM applies.")


@register("cam", "cam", "class activation map: the class's linear weights applied to the last "
          "feature maps (conv -> GAP -> linear models only)",
          "Zhou, Khosla, Lapedriza, Oliva & Torralba 2016, CVPR", **CAM)

def cam(model, x, target=None, layer=None, upsample=True, relu=False):
    """M_c = sum_k w_k^c A_k with w^c the class's row of the linear layer after GAP.

    Raw by default, as in the paper (``relu=True`` keeps the positive part).
    Raises ``CAMNotApplicableError`` on any other head (use ``gradcam``).
    """
    p = layer_pass(model, x, target, layer, gradients=False)
    w = gap_linear_weights(model, p)[p.target]
    return finish(weighted_sum(p.activations, w, relu), x, upsample)


# ---------------------------------------------------------------- gradient-weighted maps

@register("gradcam", "cam", "ReLU of the feature maps weighted by their spatially averaged gradients",
          "Selvaraju, Cogswell, Das, Vedantam, Parikh & Batra 2017, ICCV", **CAM)

def gradcam(model, x, target=None, layer=None, upsample=True, relu=True):
    """L = ReLU(sum_k alpha_k A_k), alpha_k = mean_ij dy^c/dA_k(ij)."""
    p = layer_pass(model, x, target, layer)
    return finish(weighted_sum(p.activations, p.gradients.mean((2, 3)), relu), x, upsample)


def gradcam_pp_weights(a: torch.Tensor, g: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Grad-CAM++ channel weights (eq. 19 of the paper, exponential score):
    alpha_ij = g^2 / (2 g^2 + sum_ab A_ab g^3), w_k = sum_ij alpha_ij ReLU(g_ij).
    ``eps=0`` (default) divides exactly and puts 0 where the denominator is 0, as the
    authors' code does. pytorch-grad-cam adds ``eps=1e-6`` to the denominator; pass
    ``eps=1e-6`` to reproduce it. That constant is not negligible when gradients are
    small: on shapesnet every gradient is w/256, so g^2 is of the order of 1e-6 itself."""
    g2 = g * g
    denom = 2 * g2 + a.sum((2, 3), keepdim=True) * g2 * g + eps
    alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)),
                        torch.zeros_like(g))
    return (alpha * g.clamp_min(0)).sum((2, 3))


@register("gradcam_pp", "cam", "Grad-CAM with pixel-wise weighted positive gradients (better for "
          "several instances of a class)",
          "Chattopadhyay, Sarkar, Howlader & Balasubramanian 2018, WACV", **CAM)

def gradcam_pp(model, x, target=None, layer=None, upsample=True, relu=True, eps=0.0):
    p = layer_pass(model, x, target, layer)
    w = gradcam_pp_weights(p.activations, p.gradients, eps)
    return finish(weighted_sum(p.activations, w, relu), x, upsample)


@register("hirescam", "cam", "element-wise gradient x activation summed over channels (no averaging, "
          "so the map shows the positions the score actually used)",
          "Draelos & Carin 2020, arXiv:2011.08891", **CAM)

def hirescam(model, x, target=None, layer=None, upsample=True, relu=True):
    p = layer_pass(model, x, target, layer)
    return finish(weighted_sum(p.activations, p.gradients, relu), x, upsample)


# ---------------------------------------------------------------- guided Grad-CAM

@register("guided_gradcam", "cam", "guided backpropagation multiplied by the upsampled Grad-CAM map: "
          "fine detail, class-discriminative",
          "Selvaraju, Cogswell, Das, Vedantam, Parikh & Batra 2017, ICCV", layer=True, reduce="abs_max")

def guided_gradcam(model, x, target=None, layer=None):
    """Guided backprop [N,3,H,W] times Grad-CAM upsampled to the input size;
    ``reduce`` collapses the colour channels (``None``: keep [N,3,H,W])."""
    from .saliency import guided_backprop

    p = layer_pass(model, x, target, layer)
    heat = finish(weighted_sum(p.activations, p.gradients.mean((2, 3))), x, True)
    return guided_backprop(model, x, p.target, reduce=None) * heat[:, None]


# ---------------------------------------------------------------- XGrad-CAM, LayerCAM, Eigen-CAM

@register("xgradcam", "cam", "Grad-CAM with each gradient weighted by its channel's share of the "
          "activation (satisfies the sensitivity and conservation axioms)",
          "Fu, Hu, Dong, Guo, Gao & Li 2020, BMVC", **CAM)
def xgradcam(model, x, target=None, layer=None, upsample=True, relu=True):
    """L = ReLU(sum_k w_k A_k), w_k = sum_ij G_k(ij) A_k(ij) / sum_ij A_k(ij)
    (a channel whose activations sum to 0 gets weight 0)."""
    p = layer_pass(model, x, target, layer)
    a, total = p.activations, p.activations.sum((2, 3))
    w = torch.where(total != 0, (p.gradients * a).sum((2, 3)) / total.where(total != 0, 1.0), 0.0)
    return finish(weighted_sum(a, w, relu), x, upsample)


@register("layercam", "cam", "element-wise positive gradient x activation summed over channels: "
          "sharp maps also at shallow layers",
          "Jiang, Zhang, Hou, Cheng & Wei 2021, IEEE Transactions on Image Processing", **CAM)
def layercam(model, x, target=None, layer=None, upsample=True, relu=True):
    """L = ReLU(sum_k ReLU(G_k) * A_k), each position weighted by its own gradient (the paper's
    tanh rescaling is for fusing several layers' maps; one layer's map is returned as it is)."""
    p = layer_pass(model, x, target, layer)
    return finish(weighted_sum(p.activations, p.gradients.clamp_min(0), relu), x, upsample)


def principal_projection(a: torch.Tensor) -> torch.Tensor:
    """[N,C,h,w] -> [N,h,w]: each image's positions (rows, C features) centred and projected
    on their first principal direction. Its sign is arbitrary in an SVD, so it is fixed:
    the direction's loadings sum to >= 0 (the map grows where the channels grow together)."""
    rows = a.flatten(2).transpose(1, 2)                        # [N, hw, C]
    rows = rows - rows.mean(1, keepdim=True)
    v = torch.linalg.svd(rows, full_matrices=False)[2][:, 0]   # [N, C]
    v = v * torch.where(v.sum(1, keepdim=True) < 0, -1.0, 1.0)
    return (rows @ v[:, :, None]).reshape(a.shape[0], *a.shape[2:])


@register("eigencam", "cam", "gradient-free and class-agnostic: the first principal component of "
          "the feature maps", "Muhammad & Yeasin 2020, IJCNN", **CAM)
def eigencam(model, x, target=None, layer=None, upsample=True, relu=True):
    """L = ReLU(projection of the centred activations on their first principal direction).
    The map is the same for every target (the method looks at no class score)."""
    p = layer_pass(model, x, target, layer, gradients=False)
    m = principal_projection(p.activations)
    return finish(m.clamp_min(0) if relu else m, x, upsample)
