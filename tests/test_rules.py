"""Rule-based methods (lrp, excitation_backprop, deeplift) against their references, zennit
0.5.1 and Captum's DeepLift, on the same model and input; conservation; nothing leaks.

Two equivalent model rewrites are made for the references, never for our side:
- zennit merges a BatchNorm into the layer before it and leaves the BatchNorm computing
  x / sqrt(1 + eps), a factor 1 - 5e-6 per layer that adds up to about 4e-5 over a network. Its
  copy gets eps = 0 and running_var + eps (the same function), so its leftover BatchNorms are
  exact identities. The model's input normalisation gets zennit's Pass rule, as ours does.
- Captum's DeepLift needs each module used once (resnet calls one ReLU twice per block) and,
  when a ReLU feeds a max pool, reads the plain gradient at their shared tensor; its copy
  gets one ReLU per call and a copy step before each max pool.
"""
import copy
import warnings

import pytest
import torch
from torch import nn

import xailab
from xailab import hooks, models
from xailab.models import Normalize

zennit = pytest.importorskip("zennit")
from captum.attr import DeepLift  # noqa: E402
from torchvision.models.resnet import BasicBlock  # noqa: E402
from zennit.attribution import Gradient  # noqa: E402
from zennit.canonizers import SequentialMergeBatchNorm  # noqa: E402
from zennit.composites import (EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlus,  # noqa: E402
                               EpsilonPlusFlat, ExcitationBackprop)
from zennit.rules import Pass  # noqa: E402
from zennit.torchvision import ResNetCanonizer  # noqa: E402

MODELS = ("shapesnet", "shapesvgg", "vgg11", "resnet18")
COMPOSITES = ("epsilon_plus", "epsilon_plus_flat", "epsilon_alpha2_beta1", "epsilon_gamma_box")
TARGET = torch.tensor([1, 4])


@pytest.fixture(scope="module")
def images():
    return xailab.data.shapes("test", 2, seed=3).images()


_LOADED = {}


def load(name):
    if name not in _LOADED:
        _LOADED[name] = models.load(name) if name.startswith("shapes") else models.load_torchvision(name)
    return _LOADED[name]


def relative_error(ours, ref):
    ours, ref = ours.detach(), ref.detach()
    return float((ours - ref).abs().max() / ref.abs().max())


# ----------------------------------------------------------------------------- zennit
def exact_batch_norms(model):
    m = copy.deepcopy(model)
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_var.data += bn.eps
            bn.eps = 0.0
    return m


def zennit_relevance(model, x, composite, start):
    m = exact_batch_norms(model)
    canonizers = [ResNetCanonizer()] if getattr(model, "arch", "") == "resnet18" else [SequentialMergeBatchNorm()]
    kw = dict(layer_map=[(Normalize, Pass())], canonizers=canonizers)
    if composite == "epsilon_gamma_box":       # [0, 1] images as the first convolution sees them
        mean, std = m.normalize.mean, m.normalize.std
        size = (1, 3, *x.shape[-2:])
        comp = EpsilonGammaBox(low=((0 - mean) / std).expand(size), high=((1 - mean) / std).expand(size), **kw)
    else:
        comp = {"epsilon_plus": EpsilonPlus, "epsilon_plus_flat": EpsilonPlusFlat,
                "epsilon_alpha2_beta1": EpsilonAlpha2Beta1, "excitation_backprop": ExcitationBackprop}[composite](**kw)

    def seed(out):
        one_hot = torch.zeros_like(out).scatter_(1, TARGET.view(-1, 1), 1.0)
        return one_hot * out if start == "logit" else one_hot
    with Gradient(m, comp) as attributor:
        _, relevance = attributor(x, seed)
    return relevance


@pytest.mark.parametrize("composite", COMPOSITES)
@pytest.mark.parametrize("name", MODELS)
def test_lrp_equals_zennit(name, composite, images):
    model = load(name)
    ours = xailab.explain(model, images, TARGET, method="lrp", composite=composite, reduce=None)
    ref = zennit_relevance(model, images, composite, start="logit")
    assert relative_error(ours, ref) < 1e-5, (name, composite)


@pytest.mark.parametrize("name", MODELS)
def test_excitation_backprop_equals_zennit(name, images):
    model = load(name)
    ours = xailab.explain(model, images, TARGET, method="excitation_backprop", reduce=None)
    ref = zennit_relevance(model, images, "excitation_backprop", start="one")
    assert relative_error(ours, ref) < 1e-5


def _negated_output_layer(model):
    m = copy.deepcopy(model)
    last = [mod for mod in m.modules() if isinstance(mod, nn.Linear)][-1]
    last.weight.data.neg_()
    last.bias.data.neg_()
    return m


@pytest.mark.parametrize("name", ["shapesnet", "resnet18"])
def test_contrastive_excitation_backprop_subtracts_the_dual_unit(name, images):
    # the rules below the output layer are linear in the relevance, so the contrastive map is
    # zennit's map of the model minus zennit's map of the model with negated output weights.
    # The difference of two nearly equal maps magnifies float32 rounding (1.3e-5 was seen with
    # two threads), so both sides run in float64
    model, images = copy.deepcopy(load(name)).double(), images.double()
    ours = xailab.explain(model, images, TARGET, method="excitation_backprop", contrastive=True, reduce=None)
    ref = (zennit_relevance(model, images, "excitation_backprop", "one")
           - zennit_relevance(_negated_output_layer(model), images, "excitation_backprop", "one"))
    assert relative_error(ours, ref) < 1e-5


# ----------------------------------------------------------------------------- Captum
class _BlockWithTwoReLUs(BasicBlock):
    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu_after_sum(out + identity)


class _Copy(nn.Module):
    def forward(self, x):
        return x.clone()


def captum_ready(model):
    m = copy.deepcopy(model)
    for name, mod in list(m.named_modules()):
        if type(mod) is BasicBlock:
            mod.__class__ = _BlockWithTwoReLUs
            mod.relu_after_sum = nn.ReLU()
        if isinstance(mod, nn.ReLU):
            mod.inplace = False
        if isinstance(mod, nn.MaxPool2d):
            parent, _, attr = name.rpartition(".")
            setattr(m.get_submodule(parent), attr, nn.Sequential(_Copy(), mod))
    return m


def resnet18_with_plain_pooling():
    """resnet18 whose 3x3/2 max pool is 2x2/2: windows that do not overlap, where Captum
    passes each signal back once as the chain rule does."""
    m = copy.deepcopy(load("resnet18"))
    m.net.maxpool = nn.MaxPool2d(2, 2)
    return m


@pytest.mark.parametrize("name", ["shapesnet", "shapesvgg", "vgg11", "resnet18"])
@pytest.mark.parametrize("baseline", [None, 0.5])
def test_deeplift_equals_captum(name, baseline, images):
    model = resnet18_with_plain_pooling() if name == "resnet18" else load(name)
    ours = xailab.explain(model, images, TARGET, method="deeplift", baseline=baseline, reduce=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = DeepLift(captum_ready(model)).attribute(images, target=TARGET,
                                                      baselines=0.0 if baseline is None else baseline)
    assert relative_error(ours, ref) < 1e-5


@pytest.mark.parametrize("name", MODELS)
def test_deeplift_sums_to_the_output_difference(name, images):
    # summation-to-delta, also on resnet18's overlapping max pool
    model = load(name)
    base = torch.full_like(images, 0.25)
    attr = xailab.explain(model, images, TARGET, method="deeplift", baseline=0.25, reduce=None)
    with torch.no_grad():
        delta = (model(images) - model(base)).gather(1, TARGET.view(-1, 1)).squeeze(1)
    assert torch.allclose(attr.sum((1, 2, 3)), delta, rtol=1e-4, atol=1e-4 * float(delta.abs().max()))


# ----------------------------------------------------------------------------- conservation
def without_biases(model):
    m = copy.deepcopy(model)
    for mod in m.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)) and mod.bias is not None:
            mod.bias.data.zero_()
        if isinstance(mod, nn.BatchNorm2d):
            mod.bias.data.zero_()
            mod.running_mean.zero_()
    return m


def logits(model, x):
    with torch.no_grad():
        return model(x).gather(1, TARGET.view(-1, 1)).squeeze(1)


@pytest.mark.parametrize("composite", COMPOSITES)
@pytest.mark.parametrize("name", ["shapesnet", "shapesvgg", "resnet18"])
def test_lrp_conserves_the_logit_when_no_bias_absorbs_relevance(name, composite, images):
    # Each layer keeps the share of the relevance that its bias and its stabiliser contributed
    # to the denominator: sum_in R = sum_out R * (z - b) / (z + eps sign z). Without biases a
    # layer keeps only eps / |z| of each R (eps = 1e-6), so the pixels hold the logit up to 1e-4.
    # alpha2-beta1 is exact only where a neuron has both positive and negative contributions
    # (with none of one kind it passes on 2R or -R instead of R): within 2% (0.3% measured).
    model = without_biases(load(name))
    relevance = xailab.explain(model, images, TARGET, method="lrp", composite=composite, reduce=None)
    logit = logits(model, images)
    tol = 2e-2 if composite == "epsilon_alpha2_beta1" else 1e-4
    assert torch.allclose(relevance.sum((1, 2, 3)), logit, rtol=tol, atol=tol * float(logit.abs().max()))


@pytest.mark.parametrize("name", ["shapesnet", "resnet18"])
def test_excitation_backprop_is_a_probability_when_no_bias_absorbs_it(name, images):
    mwp = xailab.explain(without_biases(load(name)), images, TARGET, method="excitation_backprop", reduce=None)
    assert torch.allclose(mwp.sum((1, 2, 3)), torch.ones(2), atol=1e-4)


def test_trained_biases_absorb_part_of_the_logit(images):
    # measured, not assumed: what a trained model's biases keep (the lecture shows it)
    model = load("shapesnet")
    logit = logits(model, images)
    for composite in COMPOSITES:
        total = xailab.explain(model, images, TARGET, method="lrp", composite=composite, reduce=None).sum((1, 2, 3))
        assert torch.isfinite(total).all() and (total - logit).abs().max() > 1e-3, composite


# ----------------------------------------------------------------------------- the contract
RULE_METHODS = [("lrp", dict(composite=c)) for c in COMPOSITES] + [
    ("excitation_backprop", {}), ("excitation_backprop", dict(contrastive=True)), ("deeplift", {}),
    ("deeplift", dict(baseline=0.5))]


@pytest.mark.parametrize("method,options", RULE_METHODS)
def test_one_signed_map_per_image_by_default(method, options, images):
    model = load("shapesnet")
    out = xailab.explain(model, images, method=method, **options)
    raw = xailab.explain(model, images, method=method, reduce=None, **options)
    assert out.shape == (2, 64, 64) and raw.shape == (2, 3, 64, 64)
    assert torch.allclose(out, raw.sum(1))


@pytest.mark.parametrize("name", ["shapesvgg", "resnet18"])
def test_nothing_leaks_even_when_a_method_raises(name, images):
    model = copy.deepcopy(load(name)).train()
    for p in list(model.parameters())[:3]:
        p.requires_grad_(False)
    with hooks.record(model, [hooks.list_layers(model)[2]]):    # a user's own hook stays
        before = hooks.Snapshot.of(model)
        for method, options in RULE_METHODS:
            xailab.explain(model, images, TARGET, method=method, **options)
            assert before.diff(model) == [], (method, options)
            with pytest.raises(ValueError):
                xailab.explain(model, images, 5000, method=method, **options)
            with pytest.raises(ValueError, match="composite|option"):
                xailab.explain(model, images, method="lrp", composite="epsilon")
            assert before.diff(model) == [], (method, options)


def test_unknown_composite_lists_the_known_ones(images):
    with pytest.raises(ValueError, match="epsilon_plus_flat"):
        xailab.explain(load("shapesnet"), images, method="lrp", composite="alpha_beta")


def test_transformers_get_a_clear_error(images):
    from torchvision.models import VisionTransformer
    vit = models.TorchvisionModel(VisionTransformer(64, 8, 2, 2, 32, 64, num_classes=6),
                                  [str(i) for i in range(6)], "net").eval()
    for method in ("lrp", "excitation_backprop", "deeplift"):
        with pytest.raises(ValueError, match="attention_rollout"):
            xailab.explain(vit, images, method=method)
