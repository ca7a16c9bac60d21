"""Image parametrisations: what the optimiser changes to change the image.

``pixels()`` and ``fourier()`` are recipes that ``optimize`` builds for a batch size,
image size, device and random generator; a built parametrisation (``Pixels``,
``Fourier``) can be passed to ``optimize`` directly and kept between calls.
Each one gives the image [N,3,H,W] in [0,1] when called, keeps it valid after a
step (``project``) and can be set to a given image (``set_image``), which is how
``blur_every`` blurs whatever the parametrisation.
"""
from __future__ import annotations

import torch
from torch import nn


class ImageParam(nn.Module):
    """Base class: ``param()`` is the image [N,3,H,W] in [0,1]."""

    def project(self) -> None:
        """Bring the parameters back to a valid image after an optimiser step."""

    def set_image(self, image: torch.Tensor) -> None:
        """Change the parameters so that ``param()`` gives ``image`` (values in [0, 1])."""
        raise NotImplementedError


class Pixels(ImageParam):
    """The image is the parameter (clamped to [0, 1] after every step)."""

    def __init__(self, init: torch.Tensor):
        super().__init__()
        self.x = nn.Parameter(init.detach().clone())

    def forward(self):
        return self.x

    def project(self):
        with torch.no_grad():
            self.x.clamp_(0, 1)

    def set_image(self, image):
        with torch.no_grad():
            self.x.copy_(image)


# Colour decorrelation: square root of the colour covariance of natural images (Olah et al. 2017)
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOR_SQRT = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()


class Fourier(ImageParam):
    """Decorrelated image: Fourier coefficients scaled by 1/frequency (so low
    frequencies dominate), a decorrelated colour basis, then a sigmoid to [0, 1]."""

    def __init__(self, n, h, w, sd, generator, decay=1.0):
        super().__init__()
        fy = torch.fft.fftfreq(h)[:, None]
        fx = torch.fft.rfftfreq(w)[None]
        freqs = (fx ** 2 + fy ** 2).sqrt()
        self.register_buffer("scale", 1.0 / freqs.clamp_min(1.0 / max(h, w)) ** decay)
        self.h, self.w = h, w
        self.spectrum = nn.Parameter(sd * torch.randn(n, 3, h, w // 2 + 1, 2, generator=generator))

    def forward(self):
        spec = torch.view_as_complex(self.spectrum) * self.scale
        img = torch.fft.irfft2(spec, s=(self.h, self.w), norm="ortho") / 4.0
        img = torch.einsum("nchw,dc->ndhw", img, _COLOR_SQRT.to(img))
        return torch.sigmoid(img)

    def set_image(self, image):
        """The forward pass run backwards: logit, inverse colour basis, FFT, divide by the scale.
        Values are clipped to [1e-6, 1 - 1e-6] first (the sigmoid never reaches 0 or 1)."""
        with torch.no_grad():
            logits = torch.logit(image.to(self.spectrum).clamp(1e-6, 1 - 1e-6))
            unmixed = torch.einsum("ndhw,cd->nchw", logits, torch.linalg.inv(_COLOR_SQRT.to(logits)))
            spec = torch.fft.rfft2(4.0 * unmixed, norm="ortho") / self.scale
            self.spectrum.copy_(torch.view_as_real(spec).expand_as(self.spectrum))


def pixels(init: torch.Tensor | None = None, sd: float = 0.01):
    """Plain pixel parametrisation: start from ``init`` or from grey + N(0, sd^2)."""
    def make(n, h, w, device, generator):
        x0 = init if init is not None else 0.5 + sd * torch.randn(n, 3, h, w, generator=generator)
        x0 = x0.view(-1, 3, h, w).expand(n, 3, h, w) if x0.dim() == 3 else x0
        return Pixels(x0.clamp(0, 1)).to(device)
    return make


def fourier(sd: float = 0.01, decay: float = 1.0):
    """Decorrelated Fourier parametrisation (Olah, Mordvintsev & Schubert 2017)."""
    return lambda n, h, w, device, generator: Fourier(n, h, w, sd, generator, decay).to(device)


def build(param, n: int, size: int, device, generator: torch.Generator) -> ImageParam:
    """``param`` built for ``n`` images of ``size`` on ``device`` (a built one is moved there)."""
    if isinstance(param, nn.Module):
        return param.to(device)
    return param(n, size, size, device, generator)
