"""Deep SHAP with the ``shap`` package's ``DeepExplainer``, leaving the model as it was.

Deep SHAP (Lundberg & Lee 2017) runs DeepLIFT's rescale rule once for each image of a
background set, with that image as the reference, and averages the attributions. Each
DeepLIFT run sums to f(x) - f(reference), so the average sums to
f(x) - E[f(background)]: the SHAP values of a pixel-level additive explanation whose
base value is the model's mean output on the background.

``shap.DeepExplainer`` does the work; this wrapper adds what the library's other methods
promise. It explains one chosen class per image (not every output), turns in-place ReLUs
out-of-place for the call (PyTorch refuses the backward hooks shap needs on in-place
operations) and restores them, and removes the tensors that shap stores on each module
(``module.x``, ``module.y``, registered as parameters), which shap itself only cleans up
inside ``nn.Sequential``-like containers. shap's rules see modules, not functions: a ReLU
called as ``F.relu`` or one ReLU module used twice in ``forward`` (torchvision's ResNet
blocks) gets a plain gradient, and then the values no longer add up; ``additivity_gap``
says whether they do.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from . import hooks
from .attribution import resolve_target
from .runtime import device_of

__all__ = ["DeepShap", "deep_shap"]

LINEAR_MODULES = ("Normalize",)      # xailab's input normalisation: (x - mean) / std
_SHAP_ATTRIBUTES = ("x", "y")
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


@dataclass
class DeepShap:
    """Deep SHAP values of N images for one class each."""
    values: torch.Tensor      # [N,3,H,W]: one value per pixel and colour channel
    target: torch.Tensor      # [N]: the explained class of each image
    output: torch.Tensor      # [N]: f(x), the target's logit for the image
    expected: torch.Tensor    # [N]: E[f(background)], the target's mean logit on the background

    @property
    def additivity_gap(self) -> torch.Tensor:
        """[N]: sum of the values minus (f(x) - E[f(background)]); zero up to float rounding
        when the sum rule holds."""
        return self.values.flatten(1).sum(1) - (self.output - self.expected)


class _ClassScore(nn.Module):
    """The model's output for one class as a [N,1] column (the explained function)."""

    def __init__(self, model: nn.Module, cls: int):
        super().__init__()
        self.model, self.cls = model, cls

    def forward(self, x):
        return self.model(x)[:, self.cls:self.cls + 1]


def _checked(x: torch.Tensor, background: torch.Tensor):
    if x.dim() != 4:
        raise ValueError(f"x must be a batch of images [N,C,H,W], got shape {tuple(x.shape)}")
    if background.dim() != 4 or background.shape[1:] != x.shape[1:]:
        raise ValueError(f"background must be images shaped like x, [B,{','.join(map(str, x.shape[1:]))}]; "
                         f"got {tuple(background.shape)}")
    if len(background) < 1:
        raise ValueError("background needs at least one image (Deep SHAP averages over it; 20-100 is usual)")


def _unsupported_modules(model: nn.Module) -> list[str]:
    """Leaf module types for which shap has no rule (they would get a plain gradient)."""
    from shap.explainers._deep.deep_pytorch import op_handler

    leaves = {type(m).__name__ for m in model.modules() if not list(m.children())}
    return sorted(leaves - set(op_handler) - set(LINEAR_MODULES))


def _module_state(model: nn.Module) -> dict:
    """Per module: its hook ids, its full-backward-hook flag and which of shap's
    attributes it already has (so that only what shap adds is removed)."""
    return {m: ({d: set(getattr(m, d)) for d in _HOOK_DICTS}, getattr(m, "_is_full_backward_hook", None),
                {n for n in _SHAP_ATTRIBUTES if n in m._parameters}) for m in model.modules()}


def _restore_modules(state: dict) -> None:
    """Remove the hooks and ``x``/``y`` parameters that shap added, also after an error
    (shap removes its hooks only when it finishes)."""
    for m, (hook_ids, full_backward, had) in state.items():
        for d, ids in hook_ids.items():
            for key in set(getattr(m, d)) - ids:
                del getattr(m, d)[key]
        m._is_full_backward_hook = full_backward
        for name in set(_SHAP_ATTRIBUTES) - had:
            m._parameters.pop(name, None)


def deep_shap(model: nn.Module, x: torch.Tensor, background: torch.Tensor, target=None) -> DeepShap:
    """Deep SHAP values of ``target`` (None: the predicted class; an int, a list or a
    LongTensor[N]) for the images ``x`` [N,3,H,W], with ``background`` [B,3,H,W] as the
    reference distribution. Costs one forward and backward pass of 2B images per image.
    The model comes back unchanged: no hooks, same modes, flags, ``inplace`` settings,
    parameters and gradients, also when shap raises."""
    import shap

    _checked(x, background)
    device = device_of(model)
    x, background = x.to(device), background.to(device)
    unsupported = _unsupported_modules(model)
    if unsupported:
        warnings.warn(f"shap's DeepExplainer has no rule for {unsupported}; they are treated as linear, "
                      "so check additivity_gap", stacklevel=2)
    state = _module_state(model)
    grads = {p: p.grad for p in model.parameters()}
    values = torch.zeros_like(x)
    with hooks.frozen(model):
        for m in model.modules():
            if isinstance(m, nn.ReLU):
                m.inplace = False
        target = resolve_target(model, x, target)
        with torch.no_grad():
            output = model(x).gather(1, target[:, None])[:, 0]
            expected = model(background).mean(0)[target]
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="unrecognized nn.Module")
                for cls in target.unique().tolist():
                    rows = (target == cls).nonzero()[:, 0]
                    explainer = shap.DeepExplainer(_ClassScore(model, cls), background)
                    phi = explainer.shap_values(x[rows], check_additivity=False)
                    values[rows] = torch.as_tensor(phi, dtype=x.dtype, device=device).reshape(x[rows].shape)
        finally:
            _restore_modules(state)
            for p, g in grads.items():
                p.grad = g
    return DeepShap(values, target, output, expected)
