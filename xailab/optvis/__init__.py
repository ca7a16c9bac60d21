"""Pixel-space optimisation through a frozen network: feature visualisation,
DeepDream and inversion (lectures 03 and 07).

One engine, ``optimize``, ascends an ``Objective`` (what to make large) with
respect to an image given by a parametrisation (``pixels`` or the decorrelated
``fourier`` image), under random ``transforms`` (jitter, scale, rotate, blur);
penalties on the image (``l2``, ``tv``) are objectives too, and ``blur_every``
blurs the image itself every k steps, whatever its parametrisation::

    obj = optvis.channel("features.block2", 5) - 0.1 * optvis.tv()
    img = optvis.optimize(model, obj, param=optvis.fourier(), steps=256)   # [1,3,H,W] in [0,1]

Modules:
  objectives  ``channel``, ``neuron``, ``layer``, ``class_logit`` (Simonyan's class model),
              ``deepdream``, ``feature_match`` (inversion's loss), the penalties ``l2``,
              ``tv`` and ``total_variation``; objectives combine with ``+``, ``-`` and ``*``.
  param       ``pixels``, ``fourier`` (recipes) and the built ``Pixels``, ``Fourier``.
  transforms  ``jitter``, ``scale``, ``rotate``, ``blur``, ``STANDARD_TRANSFORMS``,
              ``blur_every``, ``gaussian_blur`` (torchvision's).
  render      ``optimize``; the lab's ``ascent_step`` and ``ascent``; shortcuts with tested
              defaults ``class_image``, ``class_images``, ``channel_image``, ``dream``;
              ``features`` (a layer's activation) and the step cap ``resolve_steps``.
  inversion   ``invert`` (Mahendran & Vedaldi), ``feature_error``, ``conv_input`` (the
              least-squares input of a convolution, which ``invert`` matches first when
              the layer is a convolution), and ``Decoder``, ``train_decoder``, ``decode``.
  examples    dataset examples (``channel_activations``, ``top_k``, ``top_patches``,
              ``receptive_field``) and the DeconvNet projection (``deconv_projection``).

Step cap for CI: when the environment variable ``XAILAB_MAX_STEPS`` is set (e.g.
``XAILAB_MAX_STEPS=16``), every optimisation here runs at most that many steps,
whatever ``steps`` says; unset, ``steps=None`` means each function's documented
default. Notebooks respect it unchanged, so CI can execute them quickly; the
pictures are then rougher than in the committed notebooks, and the numbers their
``# NBVAL_CHECK_OUTPUT`` cells print (measured at the full step counts) change, so
compare outputs with nbval only when the variable is unset. The tests in
tests/test_optvis.py unset it and pass explicit step counts.

Activations are captured through ``xailab.hooks`` only; every function leaves the
model as found (mode, ``requires_grad`` flags, no hooks).
"""
from .examples import channel_activations, deconv_projection, receptive_field, top_k, top_patches
from .inversion import (Decoder, conv_input, decode, feature_error, invert, rectified_conv_input,
                        train_decoder)
from .objectives import (INPUT, Context, Objective, channel, class_logit, deepdream, feature_match, l2, layer,
                         neuron, total_variation, tv)
from .param import Fourier, ImageParam, Pixels, fourier, pixels
from .render import (STEPS_ENV, ascent, ascent_step, channel_image, class_image, class_images, dream, features,
                     optimize, resolve_steps)
from .transforms import STANDARD_TRANSFORMS, BlurEvery, blur, blur_every, gaussian_blur, jitter, rotate, scale

__all__ = [
    "Context", "Objective", "INPUT", "channel", "neuron", "layer", "deepdream", "class_logit", "feature_match",
    "total_variation", "l2", "tv",
    "ImageParam", "Pixels", "Fourier", "pixels", "fourier",
    "gaussian_blur", "jitter", "scale", "rotate", "blur", "STANDARD_TRANSFORMS", "BlurEvery", "blur_every",
    "STEPS_ENV", "resolve_steps", "optimize", "ascent_step", "ascent", "class_image", "class_images",
    "channel_image", "dream", "features",
    "invert", "feature_error", "conv_input", "rectified_conv_input", "Decoder", "train_decoder", "decode",
    "channel_activations", "top_k", "top_patches", "receptive_field", "deconv_projection",
]
