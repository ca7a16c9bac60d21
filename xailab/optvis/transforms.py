"""Random transformations of the image before the model sees it (jitter, scale,
rotate, blur), and ``blur_every``, which blurs the image itself every k steps.

A transformation is ``t(x, generator) -> x'`` on a batch [N,3,H,W]; it draws its
randomness from ``generator`` so that a seeded run repeats exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of a batch [N,C,H,W] with reflect padding; sigma <= 0: x. The kernel
    reaches ceil(3 sigma) pixels each side (at most the image size minus one).

    Two 1-D passes. torchvision's ``gaussian_blur`` (one pass with the 2-D kernel) gives the
    same values to 1e-6 in float32 and 1e-12 in float64 (tests/test_optvis.py), but rounds
    differently (up to 5e-7), and the lab's gradient ascent, whose steps are normalised by
    the mean gradient, amplifies rounding over its 32 steps: lab 03's class images and the
    probabilities printed for them depend on this exact computation."""
    if sigma <= 0:
        return x
    full = max(1, math.ceil(3 * sigma))
    t = torch.arange(-full, full + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    r = min(full, x.shape[-1] - 1, x.shape[-2] - 1)          # cut to the image, renormalised
    k = k[full - r:full + r + 1]
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def jitter(d: int = 4):
    """Shift the image by a random (dy, dx) in [-d, d] (wrapping around)."""
    def t(x, g):
        dy, dx = (int(v) for v in torch.randint(-d, d + 1, (2,), generator=g))
        return torch.roll(x, (dy, dx), (2, 3))
    return t


def _affine(x, theta):
    grid = F.affine_grid(theta.to(x).expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="reflection", align_corners=False)


def scale(scales=(0.9, 0.95, 1.0, 1.05, 1.1)):
    """Zoom by a random factor from ``scales`` (same image size)."""
    def t(x, g):
        s = float(scales[int(torch.randint(len(scales), (1,), generator=g))])
        return _affine(x, torch.tensor([[1 / s, 0, 0], [0, 1 / s, 0]]))
    return t


def rotate(degrees=(-10, -5, 0, 5, 10)):
    """Rotate by a random angle from ``degrees``."""
    def t(x, g):
        a = math.radians(float(degrees[int(torch.randint(len(degrees), (1,), generator=g))]))
        return _affine(x, torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0]]))
    return t


def blur(sigma: float = 0.5):
    """Gaussian blur of the model's input (the image itself is not changed)."""
    return lambda x, g: gaussian_blur(x, sigma)


STANDARD_TRANSFORMS = (jitter(4), scale(), rotate(), jitter(2))


@dataclass
class BlurEvery:
    """Not a penalty: blur the image itself every ``k`` steps (Yosinski et al. 2015),
    whatever its parametrisation (``optimize`` sets the parametrisation to the blurred image)."""
    k: int = 4
    sigma: float = 0.5


def blur_every(k: int = 4, sigma: float = 0.5) -> BlurEvery:
    """Blur the image with a Gaussian of width ``sigma`` after every ``k``-th step."""
    return BlurEvery(k, sigma)
