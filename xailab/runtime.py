"""How xailab runs a model, in one place: the model's device, checks of counts and
sizes, eval mode with everything restored, batch slices, and the fast inference
copy with its memory layout.

Every module that runs a model for many images goes through these helpers, so a
change (a new device, a better batch size) is made once.
"""
from __future__ import annotations

import contextlib
import weakref

import numpy as np
import torch
from torch import nn

__all__ = ["device_of", "positive_int", "evaluating", "batched",
           "inference_copy", "named_inference_copy", "fast_layout", "default_batch_size"]


def device_of(model: nn.Module, default=None) -> torch.device:
    """The device of the model's first parameter (or buffer); ``default`` (the CPU when
    None) for a model with neither."""
    t = next(model.parameters(), None)
    if t is None:
        t = next(model.buffers(), None)
    return t.device if t is not None else torch.device(default or "cpu")


def class_scores(out: torch.Tensor, who_needs: str) -> torch.Tensor:
    """``out`` when it is class scores [N, classes]; else a ValueError naming the caller,
    e.g. ``who_needs="gradient methods need"``."""
    if out.dim() != 2:
        raise ValueError(f"the model returns shape {tuple(out.shape)}; {who_needs} class scores [N, classes]")
    return out


def positive_int(value, name: str, hint: str = "") -> int:
    """``value`` as an int >= 1, or a ValueError naming ``name`` (``hint`` is appended)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive whole number, got {value!r}{hint}")
    return int(value)


@contextlib.contextmanager
def evaluating(model: nn.Module, grad: bool = False):
    """Eval mode (and no autograd unless ``grad``) for the body; the model's modes,
    flags and in-place ReLUs come back as they were, also when the body raises."""
    from . import hooks

    with hooks.preserved(model), torch.set_grad_enabled(grad):
        model.eval()
        yield model


def default_batch_size(x: torch.Tensor) -> int:
    """Images per forward pass: 32 on the CPU (larger batches overflow the caches and run
    slower per image), 256 on an accelerator."""
    return 32 if x.device.type == "cpu" else 256


def batched(n: int, batch_size: int):
    """``slice`` objects that cover ``range(n)`` in steps of ``batch_size``."""
    batch_size = positive_int(batch_size, "batch_size")
    return [slice(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def fast_layout(x: torch.Tensor) -> torch.Tensor:
    """Image batches in channels-last memory layout on the CPU, where oneDNN's
    convolutions run them 1.5-2x faster (same values up to float rounding)."""
    if x.device.type == "cpu" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


_INFERENCE_COPIES: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()
_PURE_MODULES = ("torch.nn.", "torchvision.", "xailab.models")   # forwards without side effects


def _state_signature(model: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer is replaced or modified in place."""
    return tuple((t.data_ptr(), t._version, t.device.type)
                 for t in list(model.parameters()) + list(model.buffers()))


def _copy_runs_alike(model: nn.Module) -> bool:
    """True when a faster copy of ``model`` would run exactly like it: no gradients, eval
    mode, no hooks (a hook must see every pass), and only torch, torchvision and xailab
    modules (another module's forward might count calls, print or keep state)."""
    from . import hooks
    if torch.is_grad_enabled() or model.training or hooks.count_hooks(model):
        return False
    return all(type(m).__module__.startswith(_PURE_MODULES) and "forward" not in vars(m)
               for m in model.modules())                # (a forward patched onto an instance counts)


def inference_copy(model: nn.Module) -> nn.Module:
    """What to run for many forward passes without gradients (perturbation methods,
    Score-CAM, deletion curves): a cached copy of an eval-mode ``model`` with every
    BatchNorm folded into the convolution before it and in-place ReLUs; the same outputs
    up to float rounding (about 1e-7 relative), about 1.5x faster on the CPU.

    Returns ``model`` itself when a copy could behave differently: gradients are enabled,
    the model is in training mode, it carries hooks (a hook must see every pass), one of
    its modules is not a torch, torchvision or xailab class (its forward might count calls,
    print or keep state, which a traced copy would not do), or torch.fx cannot trace it.
    The copy is rebuilt when any weight changes."""
    from torch.fx.experimental.optimization import fuse

    if not _copy_runs_alike(model):
        return model
    signature = _state_signature(model)
    cached = _INFERENCE_COPIES.get(model)
    if cached is not None and cached[0] == signature:
        return cached[1] or model
    try:
        copy = fuse(model, inplace=False)
    except Exception:                       # not traceable (data-dependent control flow, ...)
        copy = None                         # (never store the model itself: it is the weak key)
    else:
        for m in copy.modules():
            if isinstance(m, nn.ReLU):
                m.inplace = True
        copy.eval().requires_grad_(False)
    _INFERENCE_COPIES[model] = (signature, copy)
    return copy or model


_NAMED_COPIES: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def named_inference_copy(model: nn.Module, keep=()) -> nn.Module:
    """A cached faster copy of an eval-mode ``model`` in which every module keeps its name,
    so layers are hooked by name on the copy as on the model (``inference_copy`` gives a
    traced graph instead). Inside each ``nn.Sequential``, a BatchNorm2d right after a
    Conv2d is folded into it (and becomes ``nn.Identity``), and a ReLU right after a
    convolution or linear layer runs in place. For the modules named in ``keep`` (the
    layers a caller hooks): a convolution there is not folded (its output would become
    the BatchNorm's) and no later ReLU overwrites their output in place. Same outputs up
    to float rounding; returns ``model`` itself when a copy could behave differently
    (see ``inference_copy``)."""
    import copy

    if not _copy_runs_alike(model):
        return model
    key = (_state_signature(model), tuple(sorted(keep)))
    cached = _NAMED_COPIES.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    net = copy.deepcopy(model).requires_grad_(False)
    for prefix, seq in list(net.named_modules()):
        if type(seq) is nn.Sequential:
            _fold_sequential(seq, prefix, set(keep))
    _NAMED_COPIES[model] = (key, net)
    return net


def _fold_sequential(seq: nn.Sequential, prefix: str, keep: set):
    """``named_inference_copy``'s changes to one Sequential, in place."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    names = list(seq._modules)
    full = {n: f"{prefix}.{n}".lstrip(".") for n in names}
    for a, b in zip(names, names[1:]):
        conv, bn = seq._modules[a], seq._modules[b]
        if (isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.track_running_stats
                and full[a] not in keep):
            seq._modules[a], seq._modules[b] = fuse_conv_bn_eval(conv, bn), nn.Identity()
    producer = None                      # the module whose fresh output reaches this point, if any
    for n in names:
        m = seq._modules[n]
        if type(m) is nn.ReLU and producer is not None:
            m.inplace = True
        if isinstance(m, (nn.Conv2d, nn.Linear)) and full[n] not in keep:
            producer = n
        elif not (isinstance(m, nn.Identity) and full[n] not in keep):
            producer = None
