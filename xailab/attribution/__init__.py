"""All attribution methods behind one registry: ``xailab.explain(model, x, method=...)``.

A method is a bare function ``fn(model, x, target, **options)`` registered with
``@register(name, family, ...)``. The registry is the one place that wraps it: the
wrapper refuses while a lab check forbids the method (``xailab.solving``), checks the
input, validates the target (None: the method uses the predicted class), checks the
option names, and runs the method in eval mode with its parameters frozen under
``hooks.frozen``, so the model's modes and flags come back unchanged, even when the
method raises. Methods that return channels [N,C,H,W] name a default ``reduce``;
the wrapper applies ``reduce`` once (``reduce=None`` keeps the channels).

``register`` returns the wrapped function, so a direct call such as
``xailab.attribution.saliency.gradient(model, x)`` takes the same path as ``explain``.
One option vocabulary holds for every method: ``target``, ``batch_size`` (images
per forward pass, where a method batches), ``seed`` (where it samples, default 0),
``n_steps``, ``baseline``, ``output`` ("logit" or "probability", where a method
scores perturbed images) and ``reduce``. The older names (``internal_batch_size``,
``steps``, ``hide_color``, ``probs``) still work for one release, with a warning.
"""
from __future__ import annotations

import difflib
import functools
import inspect
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .. import hooks
from ..runtime import device_of
from ..solving import refuse

FAMILY_ORDER = ("gradient", "cam", "perturbation", "rule", "attention")  # the order of methods() (then registration)
ALIASES = {"internal_batch_size": "batch_size", "steps": "n_steps", "hide_color": "baseline"}


@dataclass
class Method:
    """A registered method and what callers need to know about it."""
    name: str
    fn: Callable                       # the bare method, called by ``run`` only
    family: str
    summary: str
    reference: str
    layer: bool = False                # takes ``layer=`` (the CAM family)
    cost: str = "fast"                 # "slow": many forward passes (widgets show progress)
    cheap: dict = field(default_factory=dict)   # options for a quick, rough run (tests, widgets)
    reduce: str | None = None          # default reduction of a [N,C,H,W] result; None: [N,H,W]
    index: int = 0                     # registration order within the family

    @property
    def options(self) -> list[str]:
        """The option names the method accepts (besides model, x, target)."""
        names = list(inspect.signature(self.fn).parameters)[3:]
        return names + (["reduce"] if self.reduce is not None else [])

    def run(self, model: nn.Module, x: torch.Tensor, target=None, fn: Callable | None = None, **options):
        """The one entry path: refuse in a lab check, check input, target and options,
        run ``fn`` (default: the method) in eval mode with everything restored, reduce."""
        refuse(self.name)
        if self.reduce is None and options.get("reduce") is not None:
            raise TypeError(f"{self.name} returns one map per image [N,H,W]; it takes no reduce=")
        reduce = options.pop("reduce", self.reduce)
        options = self._renamed(options)
        if not (reduce is None or callable(reduce) or reduce in REDUCTIONS):
            raise ValueError(f"unknown reduce={reduce!r}; choose one of {list(REDUCTIONS)} or None")
        check_input(x, model)
        with hooks.frozen(model):
            if target is not None:
                target = resolve_target(model, x, target)
            out = (fn or self.fn)(model, x, target, **options)
        return out if self.reduce is None else reduce_channels(out, reduce)

    def _renamed(self, options: dict) -> dict:
        """Old option names mapped to the common vocabulary (with a warning); unknown
        names get a clear error listing close matches."""
        out = {}
        for key, value in options.items():
            if key == "probs":
                warnings.warn("probs= is deprecated: use output='probability' or output='logit'",
                              DeprecationWarning, stacklevel=4)
                key, value = "output", "probability" if value else "logit"
            elif key in ALIASES and ALIASES[key] in self.options:
                warnings.warn(f"{key}= is deprecated: use {ALIASES[key]}=", DeprecationWarning, stacklevel=4)
                key = ALIASES[key]
            if key not in self.options:
                close = difflib.get_close_matches(key, self.options, n=2, cutoff=0.5)
                hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
                raise TypeError(f"{self.name} has no option {key!r}.{hint} Its options: "
                                f"{', '.join(self.options) or 'none'}")
            out[key] = value
        return out


_REGISTRY: dict[str, Method] = {}


def register(name: str, family: str, summary: str, reference: str = "", **about):
    """Decorator: add ``fn(model, x, target, **options)`` to the registry as ``name``
    (``about``: the Method's ``layer``, ``cost``, ``cheap`` and ``reduce``). Returns
    the wrapped function, which takes the same path as ``explain``."""
    def deco(fn):
        index = sum(m.family == family for m in _REGISTRY.values())
        method = Method(name, fn, family, summary, reference, index=index, **about)
        _REGISTRY[name] = method

        @functools.wraps(fn)
        def public(model, x, target=None, **options):
            return method.run(model, x, target, **options)
        public.method = method
        return public
    return deco


def _family_rank(m: Method) -> tuple:
    order = FAMILY_ORDER.index(m.family) if m.family in FAMILY_ORDER else len(FAMILY_ORDER)
    return order, m.family, m.index


def methods(family: str | None = None) -> list[str]:
    """Names of every registered attribution method (optionally of one family), in the
    course's family order."""
    ordered = sorted(_REGISTRY.values(), key=_family_rank)
    return [m.name for m in ordered if family is None or m.family == family]


def get_method(name: str) -> Method:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown method {name!r}.{hint} Available: {', '.join(methods())}")
    return _REGISTRY[name]


def describe(name: str) -> str:
    """One line on a method: its family, what it does and the paper it comes from."""
    m = get_method(name)
    return f"{m.name} ({m.family}): {m.summary}" + (f" [{m.reference}]" if m.reference else "")


def check_input(x, model: nn.Module | None = None) -> torch.Tensor:
    """Raise a clear error unless ``x`` is a FloatTensor[N,3,H,W] with values in [0, 1],
    finite, with N >= 1 (an empty batch raises for every method alike)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of images [N,3,H,W], got {type(x).__name__}")
    if x.dim() == 3:
        raise ValueError(f"x has shape {tuple(x.shape)}, not a batch [N,3,H,W]: add a batch dimension, "
                         "e.g. x[None] or x.unsqueeze(0)")
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"x must have shape [N,3,H,W], got {tuple(x.shape)}"
                         + (" (channels last? use x.permute(0, 3, 1, 2))" if x.dim() == 4 and x.shape[-1] == 3 else ""))
    if not x.is_floating_point():
        raise TypeError(f"x must be a float tensor in [0, 1], got {x.dtype}; use x.float() / 255")
    if x.shape[0] == 0:
        raise ValueError("x holds no images (an empty batch [0,3,H,W]); every method needs at least one")
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        raise ValueError(f"{bad} image(s) in x contain NaN or inf values; every explanation of them "
                         "would be NaN. Find where they come from (e.g. a division by zero) first")
    lo, hi = (float(v) for v in torch.aminmax(x))
    if lo < -1e-4 or hi > 1 + 1e-4:
        raise ValueError(f"x must hold images in [0, 1] (models normalise inside), got values in "
                         f"[{lo:.3g}, {hi:.3g}]; undo any normalisation first")
    if model is not None:
        device = device_of(model, default=x.device)
        if device != x.device:
            raise ValueError(f"x is on {x.device} but the model is on {device}; use x.to({str(device)!r})")
    return x


def num_classes(model: nn.Module, x: torch.Tensor) -> int:
    classes = getattr(model, "classes", None)
    if classes:
        return len(classes)
    with torch.no_grad(), hooks.preserved(model):
        return int(model(x[:1]).shape[1])


def resolve_target(model: nn.Module, x: torch.Tensor, target=None) -> torch.Tensor:
    """``target`` as LongTensor[N]: None means the predicted class (one forward pass)."""
    n = x.shape[0]
    if target is None:
        with torch.no_grad():
            return model(x).argmax(1)
    if isinstance(target, torch.Tensor):
        t = target.to(x.device).long().reshape(-1)
        if t.numel() == 1:
            t = t.expand(n)
        elif t.numel() != n:
            raise ValueError(f"target has {t.numel()} entries but x has {n} images")
    elif isinstance(target, (list, tuple)):
        if len(target) != n:
            raise ValueError(f"target has {len(target)} entries but x has {n} images")
        t = torch.tensor(target, device=x.device, dtype=torch.long)
    elif isinstance(target, int):
        t = torch.full((n,), target, device=x.device, dtype=torch.long)
    else:
        raise TypeError(f"target must be None, an int, a list or a LongTensor, got {type(target).__name__}")
    k = num_classes(model, x)
    bad = (t < 0) | (t >= k)
    if bad.any():
        raise ValueError(f"target {t[bad][0].item()} is out of range: the model has {k} classes "
                         f"(0..{k - 1}){_class_hint(model)}")
    return t


def _class_hint(model):
    classes = getattr(model, "classes", None)
    return f"; model.classes = {classes}" if classes and len(classes) <= 20 else ""


def _abs_max(a):
    return a.abs().amax(1)


REDUCTIONS = {
    "abs_max": _abs_max,                       # default: max over channels of |attribution|
    "mean": lambda a: a.mean(1),
    "abs_sum": lambda a: a.abs().sum(1),
    "sum": lambda a: a.sum(1),
    "l2": lambda a: a.pow(2).sum(1).sqrt(),
    "max": lambda a: a.amax(1),
}


def reduce_channels(attr: torch.Tensor, reduce="abs_max") -> torch.Tensor:
    """[N,C,H,W] -> [N,H,W] with a named reduction; ``reduce=None`` returns ``attr``."""
    if reduce is None:
        return attr
    if callable(reduce):
        return reduce(attr)
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown reduce={reduce!r}; choose one of {list(REDUCTIONS)} or None")
    return REDUCTIONS[reduce](attr)


def explain(model: nn.Module, x: torch.Tensor, target=None, method: str = "gradcam", **options) -> torch.Tensor:
    """Explain ``model``'s output for ``target`` on images ``x`` with ``method``.

    Returns a heatmap FloatTensor[N,H,W] (gradient methods: ``reduce=None`` gives
    [N,C,H,W]; CAM methods: ``upsample=False`` gives the layer resolution).
    Explanations are computed in eval mode (dropout off, BatchNorm statistics frozen);
    the model comes back exactly as it was: hooks, modes, flags, parameters.
    """
    return get_method(method).run(model, x, target, **options)


# every module registers its methods on import; methods() orders them by FAMILY_ORDER,
# and within a family by the order of this import line
from . import saliency, cam, scored_cam, perturbation, superpixel, anchors, lrp, deeplift, attention  # noqa: E402,F401,I001
