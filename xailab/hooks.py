"""The only place in xailab where hooks are registered.

Every hook lives in a ``HookSet``, a context manager that removes all of its
hooks in ``finally`` (on success, on error, on KeyboardInterrupt). ``record``
captures activations and gradients; ``preserved`` restores a model's mode,
``requires_grad`` flags and in-place ReLUs; ``modified_relu_backward`` swaps the
ReLU backward rule for guided backprop and DeconvNet.
"""
from __future__ import annotations

import contextlib
import difflib
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from .runtime import device_of
from .solving import solves


class UnknownLayerError(KeyError):
    """A layer name that the model does not have (the message lists close matches)."""

    def __str__(self):
        return str(self.args[0])


def list_layers(model: nn.Module) -> list[str]:
    """Every named sub-module of ``model`` (the names ``get_layer`` accepts)."""
    return [name for name, _ in model.named_modules() if name]


def get_layer(model: nn.Module, name: str | nn.Module) -> nn.Module:
    """The sub-module called ``name``; an unknown name raises with close matches."""
    if isinstance(name, nn.Module):
        return name
    modules = dict(model.named_modules())
    if name in modules and name:
        return modules[name]
    names = list_layers(model)
    close = difflib.get_close_matches(str(name), names, n=5, cutoff=0.5)
    close += [n for n in names if str(name) and n.endswith("." + str(name)) and n not in close][:3]
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownLayerError(f"{type(model).__name__} has no layer {name!r}.{hint} "
                            f"See xailab.hooks.list_layers(model) for all {len(names)} names.")


def _dry_run(model: nn.Module, size: int | None = None) -> tuple[list[str], dict, dict]:
    """One forward pass on zeros (``size`` px, default the model's ``dry_run_size`` or 64):
    the order in which layers finish, their output shapes and output storage (to tell
    which modules return one and the same tensor)."""
    size = size or getattr(model, "dry_run_size", 64)
    order: list[str] = []
    shapes: dict[str, tuple] = {}
    storage: dict[str, int] = {}
    alive: list[torch.Tensor] = []       # held until the end, so no address is reused
    with HookSet() as hs:
        for name, m in model.named_modules():
            if not name:
                continue
            def rec(mod, inp, out, name=name):
                if isinstance(out, torch.Tensor):
                    shapes[name] = tuple(out.shape)
                    storage[name] = out.data_ptr()
                    order.append(name)
                    alive.append(out)
            hs.forward(m, rec)
        p = next(model.parameters(), None)
        dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
        device = device_of(model)
        with preserved(model), torch.no_grad():
            model.eval()
            model(torch.zeros(1, 3, size, size, device=device, dtype=dtype))
    return order, shapes, storage


def spatial_layers(model: nn.Module) -> list[str]:
    """Names of layers whose output is a spatial feature map [N,C,H,W] (H, W > 1)."""
    order, shapes, _ = _dry_run(model)
    return [n for n in dict.fromkeys(order) if len(shapes[n]) == 4 and shapes[n][-1] > 1]


_POOLING = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_PASS_THROUGH = (nn.Dropout, nn.Dropout2d, nn.Identity, nn.Flatten)


def last_spatial_layer(model: nn.Module) -> str:
    """The default layer for CAM methods, found by output shape as torch-cam does: the
    module that finishes last with a spatial output [N,C,H,W] (H, W > 1), skipping
    pooling outputs and pass-through modules. Containers finish after their children,
    so the block that returns the final feature map wins over its last leaf
    (torchvision resnet18 -> ``net.layer4``, googlenet -> ``net.inception5b``, the
    concatenation of all four branches)."""
    order, shapes, storage = _dry_run(model)
    modules = dict(model.named_modules())
    pooled = {storage[n] for n in order if isinstance(modules[n], _POOLING)}
    image = shapes[order[0]] if order else None
    found = [n for n in order if len(shapes[n]) == 4 and shapes[n][-1] > 1 and shapes[n][-2] > 1
             and storage[n] not in pooled and not isinstance(modules[n], _PASS_THROUGH)
             and not (shapes[n] == image and shapes[n][1] == 3)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no layer with a spatial output; "
                         "pass layer= explicitly (see xailab.hooks.list_layers(model))")
    return found[-1]


class HookSet:
    """Owns hooks; removes every one of them on ``remove()`` or when the ``with`` ends."""

    def __init__(self):
        self._handles = []

    def forward(self, module: nn.Module, fn):
        self._handles.append(module.register_forward_hook(fn))

    def forward_pre(self, module: nn.Module, fn):
        self._handles.append(module.register_forward_pre_hook(fn))

    def full_backward(self, module: nn.Module, fn):
        self._handles.append(module.register_full_backward_hook(fn))

    def tensor(self, t: torch.Tensor, fn):
        self._handles.append(t.register_hook(fn))

    def __len__(self):
        return len(self._handles)

    def remove(self):
        while self._handles:
            self._handles.pop().remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False


@solves("hooks.forward_hooks")
@contextlib.contextmanager
def forward_hooks(model: nn.Module, fns):
    """Register forward hooks for the duration of a ``with``: ``fns`` is a dict
    ``{layer name: hook fn}`` or a list of ``(layer name, hook fn)`` pairs (one layer may
    then get several hooks)."""
    hs = HookSet()
    try:
        for name, fn in (fns.items() if isinstance(fns, dict) else fns):
            hs.forward(get_layer(model, name), fn)
        yield hs
    finally:
        hs.remove()


@dataclass
class Recorder:
    """What ``record`` captured: ``activations[name]`` and ``gradients[name]``."""
    layers: list
    detach: bool = True
    activations: dict = field(default_factory=dict)
    gradients: dict = field(default_factory=dict)

    def __getitem__(self, name):
        return self.activations[name]


@solves("hooks.record")
@contextlib.contextmanager
def record(model: nn.Module, layers, detach: bool = True):
    """Capture the outputs of ``layers`` (a name or a list) and their gradients.

    ``rec.activations[name]`` holds the last forward output; ``rec.gradients[name]``
    the gradient of whatever was back-propagated with respect to it. With
    ``detach=True`` (default) both are detached copies; ``detach=False`` keeps the
    activation in the graph (for optimisation through a layer).
    """
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    modules = {(n if isinstance(n, str) else f"layer{i}"): get_layer(model, n) for i, n in enumerate(layers)}
    rec = Recorder(list(modules), detach)
    hs = HookSet()

    def make(name):
        def hook(module, inp, out):
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"layer {name!r} returns {type(out).__name__}, not a tensor; "
                                "record one of its sub-layers instead")
            rec.activations[name] = out.detach().clone() if detach else out
            if out.requires_grad:
                def grad_hook(g, name=name):
                    rec.gradients[name] = g.detach().clone() if detach else g
                hs.tensor(out, grad_hook)
        return hook

    try:
        for name, m in modules.items():
            hs.forward(m, make(name))
        yield rec
    finally:
        hs.remove()


def count_hooks(model: nn.Module) -> int:
    """Number of hooks currently registered on any module of ``model``."""
    total = 0
    for m in model.modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                     "_backward_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks"):
            total += len(getattr(m, attr, {}) or {})
    return total


@dataclass
class Snapshot:
    """The model state a method must leave unchanged: hooks, modes, flags, parameters."""
    hooks: int
    modes: dict
    flags: dict
    params: dict
    inplace: dict

    @classmethod
    def of(cls, model: nn.Module) -> "Snapshot":
        return cls(count_hooks(model),
                   {n: m.training for n, m in model.named_modules()},
                   {n: p.requires_grad for n, p in model.named_parameters()},
                   {n: p.detach().clone() for n, p in model.state_dict().items()},
                   {n: m.inplace for n, m in model.named_modules() if hasattr(m, "inplace")})

    def diff(self, model: nn.Module) -> list[str]:
        """What changed since the snapshot, in words (empty list: nothing)."""
        now = Snapshot.of(model)
        out = []
        if now.hooks != self.hooks:
            out.append(f"hooks: {self.hooks} before, {now.hooks} after")
        out += [f"mode of {n or 'model'} changed" for n in self.modes if now.modes.get(n) != self.modes[n]]
        out += [f"requires_grad of {n} changed" for n in self.flags if now.flags.get(n) != self.flags[n]]
        out += [f"inplace of {n} changed" for n in self.inplace if now.inplace.get(n) != self.inplace[n]]
        out += [f"parameter {n} changed" for n, v in self.params.items()
                if not torch.equal(now.params[n], v)]
        return out


@contextlib.contextmanager
def preserved(model: nn.Module):
    """Restore train/eval modes, ``requires_grad`` flags and ReLU ``inplace`` on exit."""
    modes = {m: m.training for m in model.modules()}
    flags = {p: p.requires_grad for p in model.parameters()}
    inplace = {m: m.inplace for m in model.modules() if hasattr(m, "inplace")}
    try:
        yield model
    finally:
        for m, t in modes.items():
            m.training = t
        for p, f in flags.items():
            p.requires_grad_(f)
        for m, f in inplace.items():
            m.inplace = f


@contextlib.contextmanager
def frozen(model: nn.Module):
    """``preserved``, with the model in eval mode and every parameter's ``requires_grad``
    off for the body: gradients flow to the input only."""
    with preserved(model):
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        yield model


@contextlib.contextmanager
def out_of_place_relus(model: nn.Module):
    """Make every in-place ReLU out-of-place for the ``with`` body, then restore."""
    changed = [m for m in model.modules() if isinstance(m, nn.ReLU) and m.inplace]
    try:
        for m in changed:
            m.inplace = False
        yield changed
    finally:
        for m in changed:
            m.inplace = True


def functional_relus(model: nn.Module, x: torch.Tensor) -> int:
    """Count ReLUs applied functionally (``F.relu`` / ``torch.relu``), which no module
    hook can reach: one forward pass under a torch function mode, minus ReLU modules."""
    from torch.overrides import TorchFunctionMode

    calls = {"n": 0}
    relu_fns = {torch.relu, torch.relu_, nn.functional.relu, torch.Tensor.relu, torch.Tensor.relu_}

    class Count(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in relu_fns:
                calls["n"] += 1
            return func(*args, **(kwargs or {}))

    module_calls = {"n": 0}
    with HookSet() as hs:
        for m in model.modules():
            if isinstance(m, nn.ReLU):
                hs.forward(m, lambda *a: module_calls.__setitem__("n", module_calls["n"] + 1))
        with torch.no_grad(), Count():
            model(x[:1])
    return max(0, calls["n"] - module_calls["n"])


@contextlib.contextmanager
def modified_relu_backward(model: nn.Module, rule: str):
    """Replace each ReLU module's backward rule for the ``with`` body.

    ``rule="guided"`` (Springenberg et al. 2015) passes a gradient only where both
    the forward input and the incoming gradient are positive; ``rule="deconvnet"``
    (Zeiler & Fergus 2014) applies ReLU to the incoming gradient alone. In-place
    ReLUs are made out-of-place for the duration and restored afterwards.
    """
    if rule not in ("guided", "deconvnet"):
        raise ValueError("rule must be 'guided' or 'deconvnet'")
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        warnings.warn(f"{type(model).__name__} has no nn.ReLU modules: the {rule} rule changes nothing")

    def hook(module, grad_input, grad_output):
        g = grad_output[0]
        if rule == "guided":
            return (torch.clamp(grad_input[0], min=0) if grad_input[0] is not None else None,)
        return (torch.clamp(g, min=0),)

    with out_of_place_relus(model), HookSet() as hs:
        for m in relus:
            hs.full_backward(m, hook)
        yield hs
