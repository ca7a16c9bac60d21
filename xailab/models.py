"""The course's model zoo: small shapes networks, checkpoints, a torchvision adaptor.

Every model takes images in [0, 1] and normalises inside (``model.normalize``),
carries ``.classes`` (list of class names) and ``.default_layer`` (the layer
explanations look at when none is given).
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torchvision.models.vision_transformer import ConvStemConfig, VisionTransformer

from .data.shapes import CLASSES

MODEL_DIR = Path(__file__).resolve().parent.parent / "data" / "models"
MANIFEST = MODEL_DIR / "manifest.json"
WIDTHS = (16, 32, 64)
BASE_SNAPSHOTS = (0, 10, 30, 100, 200)     # optimiser steps at which shapesnet-base is saved


class Normalize(nn.Module):
    """Maps [0, 1] images to zero-mean, unit-variance channels inside the model."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def _block(cin: int, cout: int, pool: bool, batchnorm: bool = True) -> nn.Sequential:
    norm = nn.BatchNorm2d if batchnorm else (lambda _: nn.Identity())   # same layer names either way
    layers = OrderedDict(
        conv1=nn.Conv2d(cin, cout, 3, padding=1), bn1=norm(cout), relu1=nn.ReLU(),
        conv2=nn.Conv2d(cout, cout, 3, padding=1), bn2=norm(cout), relu2=nn.ReLU())
    if pool:
        layers["pool"] = nn.MaxPool2d(2)
    return nn.Sequential(layers)


def _features(last_pool: bool, widths=WIDTHS, batchnorm: bool = True) -> nn.Sequential:
    a, b, c = widths
    return nn.Sequential(OrderedDict(
        block1=_block(3, a, True, batchnorm), block2=_block(a, b, True, batchnorm),
        block3=_block(b, c, last_pool, batchnorm)))


SHAPES_MEAN, SHAPES_STD = (0.45, 0.45, 0.45), (0.25, 0.25, 0.25)


class ShapesNet(nn.Module):
    """conv features -> global average pooling -> linear: the architecture CAM needs."""

    def __init__(self, classes=CLASSES, widths=WIDTHS, batchnorm: bool = True):
        super().__init__()
        self.classes = list(classes)
        self.default_layer = "features.block3"
        self.normalize = Normalize(SHAPES_MEAN, SHAPES_STD)
        self.features = _features(False, widths, batchnorm)    # 64 x 16 x 16 at 64 x 64 input
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], len(self.classes))

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.features(self.normalize(x))), 1))


class ShapesVGG(nn.Module):
    """conv features -> flatten -> two linear layers: CAM cannot apply, Grad-CAM can."""

    def __init__(self, classes=CLASSES, size: int = 64):
        super().__init__()
        self.classes = list(classes)
        self.default_layer = "features.block3"
        self.normalize = Normalize(SHAPES_MEAN, SHAPES_STD)
        self.features = _features(last_pool=True)       # 64 x 8 x 8 at 64 x 64 input
        side = size // 8
        self.classifier = nn.Sequential(OrderedDict(
            flatten=nn.Flatten(), fc1=nn.Linear(WIDTHS[2] * side * side, 128), relu=nn.ReLU(),
            dropout=nn.Dropout(0.3), fc2=nn.Linear(128, len(self.classes))))

    def forward(self, x):
        return self.classifier(self.features(self.normalize(x)))


class ShapesViT(VisionTransformer):
    """A small vision transformer for the shapes dataset: 64 px images, one token per
    8 x 8 patch (an 8 x 8 grid of tokens plus the class token); torchvision's own
    ``VisionTransformer``, so reference libraries work on it unchanged. The patch
    embedding is a small convolutional stem (three stride-2 3x3 convolutions, Xiao et
    al. 2021, torchvision's ``conv_stem_configs``) instead of one linear projection
    per patch: with it the transformer trains to high accuracy in minutes on a CPU."""

    def __init__(self, classes=CLASSES, size: int = 64, patch: int = 8, layers: int = 4,
                 heads: int = 4, width: int = 48):
        stem = [ConvStemConfig(out_channels=c, kernel_size=3, stride=2) for c in (16, 32, 48)]
        super().__init__(image_size=size, patch_size=patch, num_layers=layers, num_heads=heads,
                         hidden_dim=width, mlp_dim=2 * width, num_classes=len(classes),
                         conv_stem_configs=stem)
        self.classes = list(classes)
        # the last block's first LayerNorm: its patch tokens still reach the class token
        # (after the last block only the class token feeds the classifier)
        self.default_layer = f"encoder.layers.encoder_layer_{layers - 1}.ln_1"
        self.normalize = Normalize(SHAPES_MEAN, SHAPES_STD)

    def forward(self, x):
        return super().forward(self.normalize(x))


ZOO = {
    "shapesnet": (ShapesNet, "GAP network for the shapes dataset (CAM applies)"),
    "shapesvgg": (ShapesVGG, "flatten + fully connected head (CAM does not apply)"),
    "shapesnet-shortcut": (ShapesNet, "ShapesNet trained on the watermarked (shortcut) data"),
    "shapesnet-random-labels": (ShapesNet, "ShapesNet trained to memorise randomly permuted labels "
                                           "(the data-randomisation sanity check)"),
    # dissection's findings (Bau et al. 2017) on our scale: one shorter recipe for all four,
    # differing only in width or BatchNorm; the base run also keeps snapshots during training
    "shapesnet-base": (ShapesNet, "ShapesNet on the shorter recipe shared by the variants below"),
    "shapesnet-nobn": (partial(ShapesNet, batchnorm=False), "shapesnet-base without BatchNorm"),
    "shapesnet-narrow": (partial(ShapesNet, widths=(8, 16, 32)), "shapesnet-base at half the width"),
    "shapesnet-wide": (partial(ShapesNet, widths=(24, 48, 96)), "shapesnet-base at 1.5 times the width"),
    **{f"shapesnet-base-step{step:04d}": (ShapesNet, f"shapesnet-base after {step} training steps")
       for step in BASE_SNAPSHOTS},
    "shapesvit": (ShapesViT, "small vision transformer (8 x 8 patch tokens from a conv stem, 4 blocks, 4 heads)"),
    "shapesvit-shortcut": (ShapesViT, "ShapesViT trained on the watermarked (shortcut) data"),
}


def names() -> list[str]:
    """Names of the shipped models."""
    return list(ZOO)


def build(name: str) -> nn.Module:
    """An untrained model of the given zoo name."""
    if name not in ZOO:
        raise ValueError(f"unknown model {name!r}; choose one of {names()} "
                         "or use xailab.models.load_torchvision(arch)")
    return ZOO[name][0]()


def checkpoint_path(name: str) -> Path:
    return MODEL_DIR / f"{name}.pt"


def manifest() -> dict:
    """The manifest of shipped checkpoints: name -> sha256, accuracy, training recipe."""
    return json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load(name: str, device: str | torch.device = "cpu") -> nn.Module:
    """Load a shipped, trained model (eval mode) after checking its sha256."""
    model = build(name)
    path = checkpoint_path(name)
    entry = manifest().get(name)
    if not path.exists() or entry is None:
        raise FileNotFoundError(f"no checkpoint for {name!r} at {path}; "
                                f"recreate it with `python -m xailab.train {name}`")
    digest = sha256(path)
    if digest != entry["sha256"]:
        raise RuntimeError(f"checkpoint {path} is corrupt or was changed (sha256 {digest[:12]}..., "
                           f"manifest says {entry['sha256'][:12]}...); restore it with "
                           f"`git checkout -- {path.name}` or retrain with `python -m xailab.train {name}`")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval()


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class TorchvisionModel(nn.Module):
    """A torchvision classifier wrapped to take [0, 1] images (normalises inside)."""

    def __init__(self, net: nn.Module, classes: list[str], default_layer: str, arch: str = "",
                 min_size: int = 1):
        super().__init__()
        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self.net = net
        self.classes = classes
        self.default_layer = default_layer
        self.arch = arch or type(net).__name__
        self.fixed_size = getattr(net, "image_size", None)      # vision transformers: one size only
        self.min_size = min_size
        self.dry_run_size = self.fixed_size or max(64, min_size)

    def forward(self, x):
        h, w = x.shape[-2:]
        if self.fixed_size and (h, w) != (self.fixed_size, self.fixed_size):
            raise ValueError(f"{self.arch} works at {self.fixed_size}x{self.fixed_size} px only, got {h}x{w}; "
                             f"resize first, e.g. F.interpolate(x, size={self.fixed_size}, mode='bilinear')")
        if min(h, w) < self.min_size:
            raise ValueError(f"{self.arch} needs images of at least {self.min_size}x{self.min_size} px, "
                             f"got {h}x{w}; resize first, e.g. F.interpolate(x, size={self.min_size}, "
                             "mode='bilinear')")
        return self.net(self.normalize(x))


def _sizes(arch: str) -> tuple[int, int]:
    """(minimum, native) image size of a torchvision architecture, from its weights'
    metadata (read locally, nothing downloaded); (1, 224) when it has none."""
    import torchvision
    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return 1, 224
    crop = getattr(weights.transforms(), "crop_size", [224])
    return max(weights.meta.get("min_size", (1, 1))), int(crop[0])


def load_torchvision(arch: str, weights=None, num_classes: int | None = None) -> nn.Module:
    """A torchvision architecture (``weights=None``: random init, nothing downloaded).

    ``weights="DEFAULT"`` fetches ImageNet weights, which needs internet; offline,
    the error says so instead of hanging. The result normalises inside, has
    ``.classes`` and ``.default_layer`` (its last spatial layer), and is in eval mode.
    Images smaller than the architecture's minimum size (inception_v3: 75 px), or of
    another size than a vision transformer's one size, get a clear error.
    """
    import torchvision
    from . import hooks

    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"unknown torchvision architecture {arch!r}")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if weights is not None:
        import socket
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(15)
        try:
            net = torchvision.models.get_model(arch, weights=weights, **kwargs)
        except Exception as err:   # URLError, socket timeout, ...
            raise RuntimeError(f"could not download {arch} weights ({err}); this needs internet. "
                               "Offline, use weights=None or the course's models (xailab.models.load)") from err
        finally:
            socket.setdefaulttimeout(old)
        w = torchvision.models.get_weight(weights) if isinstance(weights, str) and "." in weights else weights
        classes = list(getattr(w, "meta", {}).get("categories", []) or [])
    else:
        net = torchvision.models.get_model(arch, weights=None, **kwargs)
        classes = []
    n_out = num_classes or 1000
    if not classes:
        classes = [f"class {i}" for i in range(n_out)]
    min_size, native = _sizes(arch)
    wrapped = TorchvisionModel(net, classes, default_layer="", arch=arch, min_size=min_size)
    if min_size > 32:              # at 64 px its last blocks are 1x1: look at the native size
        wrapped.dry_run_size = wrapped.fixed_size or native
    blocks = [n for n, m in wrapped.named_modules()
              if isinstance(getattr(m, "self_attention", None), nn.MultiheadAttention)]
    # a vision transformer's spatial layer is its patch embedding; explain its tokens instead
    wrapped.default_layer = f"{blocks[-1]}.ln_1" if blocks else hooks.last_spatial_layer(wrapped)
    return wrapped.eval()


# the fast inference copy lives with the other runtime helpers; models.inference_copy stays
from .runtime import inference_copy  # noqa: E402,F401
