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
    """Gaussian blur of a batch [N,C,H,W] with reflect padding (torchvision's), sigma <= 0: x.
    The kernel reaches ceil(3 sigma) pixels each side, at most the image size minus one."""
    from torchvision.transforms.v2.functional import gaussian_blur as tv_blur

    if sigma <= 0:
        return x
    r = min(max(1, math.ceil(3 * sigma)), x.shape[-1] - 1, x.shape[-2] - 1)
    return tv_blur(x, [2 * r + 1, 2 * r + 1], [float(sigma), float(sigma)])


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
