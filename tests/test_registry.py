"""One calling convention: every registered method is reached through the registry's
one wrapper, speaks one option vocabulary and returns one map per image."""
import inspect

import pytest
import torch

import xailab
from xailab import attribution, hooks
from xailab.attribution import FAMILY_ORDER, get_method

NAMES = xailab.methods()


def test_methods_are_listed_by_family_in_the_course_order():
    families = [get_method(n).family for n in NAMES]
    ranks = [FAMILY_ORDER.index(f) for f in families]
    assert ranks == sorted(ranks)
    assert set(NAMES) >= {"occlusion", "rise", "lime", "kernel_shap", "anchors", "gradient",
                          "gradient_x_input", "smoothgrad", "integrated_gradients", "guided_backprop",
                          "deconvnet", "cam", "gradcam", "gradcam_pp", "hirescam", "scorecam",
                          "guided_gradcam", "lrp", "excitation_backprop", "deeplift"}


@pytest.fixture(scope="module")
def shapesvit():
    return xailab.models.load("shapesvit")


@pytest.mark.parametrize("name", NAMES)
def test_every_method_speaks_the_common_vocabulary_and_returns_one_map_per_image(request, name):
    m = get_method(name)
    # attention methods explain a vision transformer; the rest run on the CNN here
    # (tests/test_attention.py runs every method on the transformer too)
    shapesnet = request.getfixturevalue("shapesvit" if m.family == "attention" else "shapesnet")
    x = xailab.data.shapes("test", 2, seed=5).images()
    before = hooks.Snapshot.of(shapesnet)
    options = dict(m.cheap)
    if any(o in m.options for o in ("n_samples", "n_masks", "segmentation")):
        assert "seed" in m.options, f"{name} samples, so it takes seed="
        assert inspect.signature(m.fn).parameters["seed"].default == 0
        options["seed"] = 0
    if m.cost == "slow" or "batch_size" in m.options:
        assert "batch_size" in m.options, f"{name} runs many forward passes, so it takes batch_size="
        options["batch_size"] = 3
    for target in (None, 2, torch.tensor([1, 4]), [0, 5]):
        out = xailab.explain(shapesnet, x, target, method=name, **options)
        assert out.shape == (2, 64, 64) and out.dtype == torch.float32, (name, target)
    assert before.diff(shapesnet) == []


@pytest.mark.parametrize("name", NAMES)
def test_a_direct_call_takes_the_same_checked_path_as_explain(shapesnet, name):
    module = __import__(get_method(name).fn.__module__, fromlist=["_"])
    public = getattr(module, name)
    assert public.method is get_method(name)              # the module exports the wrapped function
    x = xailab.data.shapes("test", 1).images()
    with pytest.raises(ValueError, match="batch dimension"):
        public(shapesnet, x[0])
    with pytest.raises(TypeError, match="has no option 'bogus'"):
        public(shapesnet, x, bogus=1)


def test_old_option_names_still_work_for_one_release_with_a_warning(shapesnet):
    x = xailab.data.shapes("test", 1).images()
    pairs = [("smoothgrad", dict(internal_batch_size=8, n_samples=2), dict(batch_size=8, n_samples=2)),
             ("rise", dict(probs=False, n_masks=16), dict(output="logit", n_masks=16)),
             ("lime", dict(hide_color=0.5, n_samples=20), dict(baseline=0.5, n_samples=20))]
    for name, old, new in pairs:
        with pytest.warns(DeprecationWarning):
            a = xailab.explain(shapesnet, x, 1, method=name, **old)
        assert torch.equal(a, xailab.explain(shapesnet, x, 1, method=name, **new)), name


def test_reduce_is_applied_once_by_the_registry(shapesnet):
    x = xailab.data.shapes("test", 2).images()
    raw = xailab.explain(shapesnet, x, 1, method="gradient", reduce=None)
    assert raw.shape == (2, 3, 64, 64)
    assert torch.equal(xailab.explain(shapesnet, x, 1, method="gradient"), raw.abs().amax(1))
    occ = xailab.explain(shapesnet, x, 1, method="occlusion", reduce=None, window=16, stride=16)
    assert occ.shape == (2, 3, 64, 64) and torch.equal(occ[:, 0], occ[:, 2])
    with pytest.raises(TypeError, match="takes no reduce"):
        xailab.explain(shapesnet, x, 1, method="gradcam", reduce="sum")


def test_lime_explanations_come_from_their_own_function(shapesnet):
    from xailab.attribution.superpixel import lime_explanations
    x = xailab.data.shapes("test", 1).images()
    heat, (exp,) = lime_explanations(shapesnet, x, 2, n_samples=20)
    assert heat.shape == (1, 64, 64) and 2 in exp.local_exp
    assert torch.equal(heat, xailab.explain(shapesnet, x, 2, method="lime", n_samples=20))
