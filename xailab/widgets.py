"""Interactive explorers for JupyterLab (ipywidgets).

    from xailab import widgets
    widgets.Explorer(model, images)          # image, layer, class, method -> four views
    widgets.LayerBrowser(model, image)       # feature-map grids across depth (slider)
    widgets.ClassCompare(model, image)       # one method, two classes side by side

Each explorer displays itself in a notebook cell. Views are PNG images rendered
with matplotlib (so they also show in a saved notebook's widget state and in a
browser test). Every change of a control recomputes only the views it affects.

Slow methods (the perturbation family and Score-CAM) run in a background thread
and show a progress line (forward passes so far); changing any control again
cancels the running computation at its next forward pass and starts the new one.
Fast methods run the same way and finish in well under a second on a 64x64 image.
``background=False`` computes synchronously (what the unit tests use); ``wait()``
blocks until the views are up to date.

Nothing here changes the model: explanations go through ``xailab.explain`` and
activations through ``xailab.hooks.record``; the cancel check is a forward
pre-hook owned by ``xailab.hooks.HookSet`` and removed when the call ends.
"""
from __future__ import annotations

import html
import io
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import hooks, viz
from .attribution import explain, get_method, methods
from .attribution.attention import encoder_blocks, token_grid

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


class Cancelled(Exception):
    """A newer request replaced the one being computed."""


# ----------------------------------------------------------------------- inputs

def load_images(images, size: int = 64) -> torch.Tensor:
    """A FloatTensor[N,3,H,W] in [0, 1] from a dataset (anything with ``images()`` or
    ``ds[i] -> (image, label)``), a folder of image files (resized to ``size``), a
    single image file, or a tensor [N,3,H,W] / [3,H,W]."""
    if isinstance(images, torch.Tensor):
        x = images[None] if images.dim() == 3 else images
    elif isinstance(images, (str, Path)):
        path = Path(images)
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else [path]
        if not files:
            raise ValueError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
        from PIL import Image

        arrs = [np.asarray(Image.open(f).convert("RGB").resize((size, size)), dtype=np.float32) / 255 for f in files]
        x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()
    elif hasattr(images, "images"):
        x = images.images()
    else:
        x = torch.stack([images[i][0] for i in range(len(images))])
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"images must be [N,3,H,W] (or [3,H,W]), got {tuple(x.shape)}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError("images must have values in [0, 1]; divide 8-bit images by 255")
    return x.float()


def _figure(w: float, h: float):
    """A figure outside pyplot: safe in a background thread, never shown by the inline backend."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    return fig, fig.subplots()


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


def show(view, png: bytes):
    """Put a PNG into an Image widget at its natural size (no stretching)."""
    view.width = str(int.from_bytes(png[16:20], "big"))
    view.value = png


def render_image(image, title: str = "") -> bytes:
    fig, ax = _figure(2.4, 2.5)
    ax.imshow(viz.to_image(image))
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    fig.tight_layout(pad=0.2)
    return _png(fig)


def render_explanation(image, heat, title: str = "") -> bytes:
    """The map over the image, with a colour bar (the map is scaled to [0, 1])."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    fig, ax = _figure(2.9, 2.5)
    viz.overlay(image, heat, ax=ax, title=title)
    sm = ScalarMappable(cmap="jet", norm=Normalize(0, 1))
    fig.colorbar(sm, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=7)
    fig.tight_layout(pad=0.2)
    return _png(fig)


def render_top5(probs: torch.Tensor, classes) -> bytes:
    p, idx = probs.topk(min(5, probs.numel()))
    fig, ax = _figure(2.8, 2.0)
    ax.barh(range(len(p))[::-1], p.tolist(), color="tab:blue")
    ax.set_yticks(range(len(p))[::-1], [classes[i] for i in idx.tolist()], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout(pad=0.3)
    return _png(fig)


def render_grid(activation, n: int = 16, title: str = "") -> bytes:
    """Feature maps of one image, strongest channels (by mean activation) first."""
    order = viz.strongest_channels(activation, n)
    fig, ax = _figure(4.0, 2.2)
    viz.feature_grid(activation, ax=ax, channels=order.tolist(), title=title)
    fig.tight_layout(pad=0.2)
    return _png(fig)


def class_names(model, k: int) -> list[str]:
    classes = getattr(model, "classes", None)
    return list(classes) if classes and len(classes) == k else [str(i) for i in range(k)]


# ----------------------------------------------------------------------- engine

class _Widget:
    """Shared machinery: a background worker that recomputes dirty views, latest wins."""

    def __init__(self, model, background: bool = True):
        import ipywidgets as w

        self.model, self.background = model, background
        self.renders: Counter = Counter()     # view name -> times rendered (tests read this)
        self.errors: list[str] = []
        self.status = w.HTML("")
        self.status.add_class("xailab-status")
        self._lock = threading.Lock()
        self._dirty: set[str] = set()
        self._dirty_lock = threading.Lock()     # guards _dirty and _generation
        self._generation = 0
        self._thread: threading.Thread | None = None

    # subclasses: _compute(view, generation) renders one view
    ORDER: tuple[str, ...] = ()

    def refresh(self, views):
        """Mark views as out of date and recompute them (in the background by default)."""
        with self._dirty_lock:
            self._dirty |= set(views)
            self._generation += 1
        if not self.background:
            self._work()
            return
        t = threading.Thread(target=self._work, daemon=True)
        self._thread = t
        t.start()

    def wait(self, timeout: float = 120.0):
        """Block until the latest request is done (no-op when synchronous)."""
        t = self._thread
        if t is not None:
            t.join(timeout)

    def _work(self):
        with self._lock:
            with self._dirty_lock:
                gen = self._generation
                views, self._dirty = [v for v in self.ORDER if v in self._dirty], set()
            for i, view in enumerate(views):
                try:
                    self._compute(view, gen)
                    self.renders[view] += 1
                except Cancelled:
                    with self._dirty_lock:
                        self._dirty |= set(views[i:])      # the newer request redoes these
                    return
                except Exception as err:  # noqa: BLE001 - shown in the widget, not raised
                    msg = f"{view}: {type(err).__name__}: {err}"
                    self.errors.append(msg)
                    self.status.value = f"<span style='color:#b00'>{html.escape(msg)}</span>"
                    return
            if gen == self._generation:
                self.status.value = ""

    def _explain(self, x, target, method, gen, **options):
        """``xailab.explain`` with a progress line and cancellation at each forward pass."""
        slow = get_method(method).cost == "slow"
        passes = [0]
        me = threading.get_ident()

        def check(module, inputs):
            if threading.get_ident() != me:
                return None
            if gen != self._generation:
                raise Cancelled()
            passes[0] += 1
            if slow:
                self.status.value = f"computing {method}: {passes[0]} forward passes so far…"
            return None

        if slow:
            self.status.value = f"computing {method}…"
        with hooks.HookSet() as hs:
            hs.forward_pre(self.model, check)
            try:
                return explain(self.model, x, target=target, method=method, **options)
            except Cancelled:
                raise
            except RuntimeError as err:          # autograd wraps errors raised inside hooks
                if isinstance(err.__cause__, Cancelled) or "Cancelled" in str(err):
                    raise Cancelled() from err
                raise

    def _activation(self, x, layer):
        with hooks.frozen(self.model), hooks.record(self.model, [layer]) as rec, torch.no_grad():
            self.model(x)
        a = rec.activations[layer]
        return token_grid(a[:, 1:]) if a.dim() == 3 else a    # transformer tokens: patch grid

    def _ipython_display_(self):
        from IPython.display import display

        display(self.ui)


def _predict(model, x):
    """The model's output in eval mode, its modes and flags restored afterwards."""
    with hooks.frozen(model), torch.no_grad():
        return model(x)


def _layer_options(model):
    blocks = encoder_blocks(model)
    if blocks:                                   # a vision transformer: its encoder blocks
        default = getattr(model, "default_layer", None) or ""
        return blocks, next((b for b in blocks if default == b or default.startswith(b + ".")), blocks[-1])
    layers = hooks.spatial_layers(model)
    default = getattr(model, "default_layer", None) or hooks.last_spatial_layer(model)
    return layers, (default if default in layers else layers[-1])


def _needs_layer(method: str) -> bool:
    return get_method(method).layer


def _options(method: str, layer: str) -> dict:
    return {"layer": layer} if _needs_layer(method) else {}


class Explorer(_Widget):
    """Pick an image, a layer, a class and a method; see the image, the explanation
    (with a colour bar), the top-5 predictions and the layer's strongest feature maps.

    ``images``: a dataset, a folder of image files, or a tensor. ``class`` -1 means
    "the predicted class". The layer applies to CAM-family methods and to the
    feature-map grid.
    """

    ORDER = ("image", "top5", "features", "explanation")

    def __init__(self, model, images, method: str = "gradcam", layer: str | None = None,
                 size: int = 64, background: bool = True, options: dict | None = None):
        import ipywidgets as w

        super().__init__(model, background)
        self.x = load_images(images, size)
        self.options = dict(options or {})
        self.probs = torch.softmax(_predict(model, self.x), 1)
        self.classes = class_names(model, self.probs.shape[1])
        layers, default = _layer_options(model)
        if layer is not None:
            hooks.get_layer(model, layer)        # unknown: error listing close matches
        self.image = w.IntSlider(value=0, min=0, max=len(self.x) - 1, description="image",
                                 continuous_update=False)
        self.layer = w.Dropdown(options=layers, value=layer or default, description="layer")
        self.target = w.Dropdown(options=[("prediction", -1)] + [(c, i) for i, c in enumerate(self.classes)],
                                 value=-1, description="class")
        self.method = w.Dropdown(options=methods(), value=get_method(method).name, description="method")
        self.views = {v: w.Image(format="png") for v in self.ORDER}
        self.last: dict = {}
        self.image.observe(lambda c: self.refresh(self.ORDER), "value")
        self.layer.observe(lambda c: self.refresh(("features", "explanation") if _needs_layer(self.method.value)
                                                  else ("features",)), "value")
        self.target.observe(lambda c: self.refresh(("explanation",)), "value")
        self.method.observe(lambda c: self.refresh(("explanation",)), "value")
        for name, widget in [("image", self.image), ("layer", self.layer), ("class", self.target),
                             ("method", self.method), *self.views.items()]:
            widget.add_class(f"xailab-{name}")          # stable hooks for browser tests and CSS
        controls = w.HBox([w.VBox([self.image, self.layer]), w.VBox([self.target, self.method])])
        row1 = w.HBox([self.views["image"], self.views["explanation"], self.views["top5"]])
        self.ui = w.VBox([controls, self.status, row1, self.views["features"]])
        self.refresh(self.ORDER)

    def current_target(self) -> int:
        i = self.image.value
        return int(self.probs[i].argmax()) if self.target.value == -1 else int(self.target.value)

    def _compute(self, view, gen):
        i = self.image.value
        x = self.x[i:i + 1]
        if view == "image":
            p = self.probs[i]
            show(self.views["image"], render_image(x[0], f"predicted: {self.classes[int(p.argmax())]}"))
        elif view == "top5":
            show(self.views["top5"], render_top5(self.probs[i], self.classes))
        elif view == "features":
            a = self._activation(x, self.layer.value)
            show(self.views["features"], render_grid(a[0], title=f"{self.layer.value}: strongest channels"))
        elif view == "explanation":
            method, layer, t = self.method.value, self.layer.value, self.current_target()
            heat = self._explain(x, t, method, gen, **_options(method, layer), **self.options.get(method, {}))
            used = dict(image=i, layer=layer if _needs_layer(method) else None, target=t, method=method)
            show(self.views["explanation"], render_explanation(
                x[0], heat[0], f"{method} · {self.classes[t]}"))
            self.last = used


class LayerBrowser(_Widget):
    """Feature-map grids of one image across depth: a slider walks through the
    model's spatial layers (strongest channels first)."""

    ORDER = ("features",)

    def __init__(self, model, image, n: int = 16, size: int = 64, background: bool = True):
        import ipywidgets as w

        super().__init__(model, background)
        self.x = load_images(image, size)[:1]
        self.layers, default = _layer_options(model)
        self.n = n
        self.depth = w.IntSlider(value=self.layers.index(default), min=0, max=len(self.layers) - 1,
                                 description="depth", continuous_update=False)
        self.label = w.HTML("")
        self.views = {"features": w.Image(format="png")}
        self.depth.observe(lambda c: self.refresh(self.ORDER), "value")
        self.ui = w.VBox([w.HBox([self.depth, self.label]), self.status, self.views["features"]])
        self.refresh(self.ORDER)

    @property
    def current_layer(self) -> str:
        return self.layers[self.depth.value]

    def _compute(self, view, gen):
        layer = self.current_layer
        a = self._activation(self.x, layer)
        self.label.value = f"<code>{layer}</code> {tuple(a.shape[1:])}"
        show(self.views["features"], render_grid(a[0], self.n, title=layer))


class ClassCompare(_Widget):
    """One method, two classes, side by side: where is the evidence for each?"""

    ORDER = ("left", "right")

    def __init__(self, model, image, method: str = "gradcam", classes=(0, 1), size: int = 64,
                 background: bool = True):
        import ipywidgets as w

        super().__init__(model, background)
        self.x = load_images(image, size)[:1]
        k = _predict(model, self.x).shape[1]
        self.classes = class_names(model, k)
        opts = [(c, i) for i, c in enumerate(self.classes)]
        for c in classes:
            if not 0 <= int(c) < k:
                raise ValueError(f"class {c} is out of range: the model has {k} classes (0..{k - 1})")
        self.method = w.Dropdown(options=methods(), value=get_method(method).name, description="method")
        self.left = w.Dropdown(options=opts, value=int(classes[0]), description="class A")
        self.right = w.Dropdown(options=opts, value=int(classes[1]), description="class B")
        self.views = {v: w.Image(format="png") for v in self.ORDER}
        self.method.observe(lambda c: self.refresh(self.ORDER), "value")
        self.left.observe(lambda c: self.refresh(("left",)), "value")
        self.right.observe(lambda c: self.refresh(("right",)), "value")
        self.ui = w.VBox([w.HBox([self.method, self.left, self.right]), self.status,
                          w.HBox([self.views["left"], self.views["right"]])])
        self.refresh(self.ORDER)

    def _compute(self, view, gen):
        t = (self.left if view == "left" else self.right).value
        heat = self._explain(self.x, t, self.method.value, gen)
        show(self.views[view], render_explanation(self.x[0], heat[0],
                                                        f"{self.method.value} · {self.classes[t]}"))
