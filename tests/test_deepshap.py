"""Deep SHAP through shap's DeepExplainer: the values add up to f(x) - E[f(background)]
(the sum rule) on shapesnet, and the model comes back exactly as it was."""
import warnings

import pytest
import shap  # noqa: F401  (imported here: its own import warnings are not ours)
import torch
from torch import nn

from xailab import data, hooks, models
from xailab.deep_shap import deep_shap


@pytest.fixture(scope="module")
def model():
    return models.load("shapesnet")


@pytest.fixture(scope="module")
def images():
    x = data.shapes("test", 3, seed=0).images()
    background = data.shapes("train", 8, seed=0).images()
    return x, background


def test_values_add_up_to_output_minus_expected_background_output(model, images):
    x, background = images
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)     # no warning for shapesnet's modules
        result = deep_shap(model, x, background)
    with torch.no_grad():
        logits = model(x)
        mean_background = model(background).mean(0)
    assert torch.equal(result.target, logits.argmax(1))
    assert torch.allclose(result.output, logits.max(1).values)
    assert torch.allclose(result.expected, mean_background[result.target])
    total = result.values.flatten(1).sum(1)
    assert result.values.shape == x.shape
    assert torch.allclose(total, result.output - result.expected, atol=1e-4, rtol=1e-4)
    assert result.additivity_gap.abs().max() < 1e-4
    assert (result.output - result.expected).abs().min() > 1.0      # the rule is not trivially 0 = 0


def test_a_chosen_class_per_image_also_adds_up(model, images):
    x, background = images
    result = deep_shap(model, x, background, target=[4, 4, 0])
    assert result.target.tolist() == [4, 4, 0]
    assert result.additivity_gap.abs().max() < 1e-4
    single = deep_shap(model, x[2:], background, target=0)
    assert torch.allclose(single.values, result.values[2:], atol=1e-5)


def test_leaves_the_model_unchanged_also_with_inplace_relus(model, images):
    x, background = images
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    for m in relus:
        m.inplace = True                                 # shap's hooks fail on in-place ReLUs
    first = next(model.parameters())
    first.grad = torch.ones_like(first)
    try:
        before = hooks.Snapshot.of(model)
        names = [n for n, _ in model.named_parameters()]
        result = deep_shap(model, x[:1], background[:4])
        assert result.additivity_gap.abs().max() < 1e-4
        assert before.diff(model) == []                  # hooks, modes, flags, inplace, weights
        assert all(m.inplace for m in relus)
        assert [n for n, _ in model.named_parameters()] == names     # shap's module.x / .y are gone
        assert not any(hasattr(m, "x") or hasattr(m, "y") for m in model.modules())
        assert torch.equal(first.grad, torch.ones_like(first))
        assert not model.training
    finally:
        for m in relus:
            m.inplace = False
        first.grad = None


class _FailsWithGradients(nn.Module):
    """A model that stops in the middle of shap's backward-hooked pass."""

    def __init__(self, model):
        super().__init__()
        self.net = model

    def forward(self, x):
        if x.requires_grad:
            raise RuntimeError("no gradients here")
        return self.net(x)


def test_an_error_inside_shap_leaves_no_hooks_or_stored_tensors(model, images):
    x, background = images
    failing = _FailsWithGradients(model)
    before = hooks.Snapshot.of(failing)
    names = [n for n, _ in failing.named_parameters()]
    with pytest.raises(RuntimeError, match="no gradients here"):
        deep_shap(failing, x[:1], background[:2])
    assert before.diff(failing) == []
    assert [n for n, _ in failing.named_parameters()] == names


def test_bad_input_says_what_to_do(model, images):
    x, background = images
    with pytest.raises(ValueError, match="shaped like x"):
        deep_shap(model, x, background[:, :, :32])
    with pytest.raises(ValueError, match="out of range"):
        deep_shap(model, x[:1], background, target=9)
