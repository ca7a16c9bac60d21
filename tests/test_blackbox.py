"""Lecture 01's model-agnostic methods: occlusion, RISE, LIME, Kernel SHAP, anchors."""
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import xailab
from xailab import data, hooks, models
from xailab.attribution import perturbation as P
from xailab.attribution import superpixel as S
from xailab.attribution.anchors import anchor_explanation, kl_lower_bound, kl_upper_bound


@pytest.fixture(scope="module")
def net():
    return models.load("shapesnet")


@pytest.fixture(scope="module")
def shortcut_net():
    return models.load("shapesnet-shortcut")


@pytest.fixture(scope="module")
def imgs():
    return data.shapes("test", 16, seed=5)


@pytest.fixture(scope="module")
def small_objects(imgs):
    """Images whose object covers less than a third of the image (room for background)."""
    return [i for i in range(16) if imgs.ground_truth(i)["mask"].float().mean() < 0.33]


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return models.load_torchvision("resnet18")


class Counting(nn.Module):
    """Wraps a model and counts forward passes and images."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls, self.images = model, 0, 0
        self.classes = getattr(model, "classes", None)

    def forward(self, x):
        self.calls += 1
        self.images += x.shape[0]
        return self.model(x)


class Constant(nn.Module):
    """Same logits whatever the input."""

    def __init__(self, k=4):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.k = k

    def forward(self, x):
        return torch.arange(self.k, dtype=x.dtype, device=x.device).expand(x.shape[0], -1) * 0.3 + self.w


# ----------------------------------------------------------------------------- occlusion
def captum_occlusion(model, x, target, window, stride, baseline):
    from captum.attr import Occlusion
    c = x.shape[1]
    return Occlusion(model).attribute(x, target=target, sliding_window_shapes=(c, window, window),
                                      strides=(c, stride, stride), baselines=baseline)


@pytest.mark.parametrize("window,stride,baseline", [(8, 4, 0.0), (12, 5, 0.5), (10, 10, 1.0)])
def test_occlusion_equals_captum_shapesnet(net, imgs, window, stride, baseline):
    x, t = imgs.images([0, 1]), imgs.labels[:2]
    ours = xailab.explain(net, x, t, method="occlusion", window=window, stride=stride,
                          baseline=baseline, reduce=None, batch_size=96)
    ref = captum_occlusion(net, x, t, window, stride, baseline)
    assert ours.shape == ref.shape == x.shape
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert ref.abs().max() > 1e-2      # a trained model: the comparison is not between zeros
    heat = xailab.explain(net, x, t, method="occlusion", window=window, stride=stride, baseline=baseline)
    assert heat.shape == (2, 64, 64)
    torch.testing.assert_close(heat, ref[:, 0], rtol=1e-5, atol=1e-5)


def test_occlusion_equals_captum_resnet18_and_tensor_baseline(resnet):
    torch.manual_seed(1)
    x = torch.rand(2, 3, 64, 64)
    t = torch.tensor([3, 917])
    ours = xailab.explain(resnet, x, t, method="occlusion", window=16, stride=12, reduce=None)
    torch.testing.assert_close(ours, captum_occlusion(resnet, x, t, 16, 12, 0.0), rtol=1e-5, atol=1e-5)
    base = torch.rand(2, 3, 64, 64)
    ours = xailab.explain(resnet, x, t, method="occlusion", window=32, stride=16, baseline=base, reduce=None)
    torch.testing.assert_close(ours, captum_occlusion(resnet, x, t, 32, 16, base), rtol=1e-5, atol=1e-5)


def test_occlusion_batch_size_invariant_and_pass_count(net, imgs):
    x = imgs.images([2, 3, 4])
    runs = [xailab.explain(net, x, 1, method="occlusion", window=16, stride=8, batch_size=b)
            for b in (1, 7, 10_000)]
    for r in runs[1:]:
        torch.testing.assert_close(r, runs[0], rtol=1e-5, atol=1e-6)
    counter = Counting(net)
    xailab.explain(counter, x, 1, method="occlusion", window=16, stride=8, batch_size=50)
    positions = (math.ceil((64 - 16) / 8) + 1) ** 2
    assert counter.calls == 1 + math.ceil(3 * positions / 50)
    assert counter.images == 3 + 3 * positions


def test_occlusion_windows_cover_everything():
    masks, counts = P.occlusion_windows(64, 64, 12, 5)
    assert masks.shape[0] == (math.ceil(52 / 5) + 1) ** 2
    assert counts.min() >= 1 and masks[-1, -1, -1]


# ----------------------------------------------------------------------------- RISE
def test_rise_masks_cached_seeded_and_shaped():
    a = P.rise_masks(300, 32, cell=4, p=0.3, seed=11)
    assert P.rise_masks(300, 32, cell=4, p=0.3, seed=11) is a          # cached, not regenerated
    P._masks_on.cache_clear()
    b = P.rise_masks(300, 32, cell=4, p=0.3, seed=11)
    assert b is not a and torch.equal(a, b)                            # seed-deterministic
    assert not torch.equal(a, P.rise_masks(300, 32, cell=4, p=0.3, seed=12))
    assert a.shape == (300, 32, 32) and a.min() >= 0 and a.max() <= 1
    assert abs(a.mean().item() - 0.3) < 0.03


def test_rise_reuses_masks_and_counts_passes(net, imgs):
    x = imgs.images([0, 1])
    counter = Counting(net)
    s1 = xailab.explain(counter, x, torch.tensor([0, 1]), method="rise", n_masks=90, batch_size=40, seed=4)
    assert counter.calls == math.ceil(2 * 90 / 40) and counter.images == 180
    key_count = P._masks_on.cache_info().currsize
    s2 = xailab.explain(net, x, torch.tensor([0, 1]), method="rise", n_masks=90, batch_size=7, seed=4)
    assert P._masks_on.cache_info().currsize == key_count
    torch.testing.assert_close(s1, s2, rtol=1e-5, atol=1e-6)
    s3 = xailab.explain(net, x, torch.tensor([0, 1]), method="rise", n_masks=90, seed=5)
    assert not torch.allclose(s1, s3)


def test_rise_normalisation_constant_model():
    model = Constant(4)
    x = torch.rand(2, 3, 32, 32)
    p = 0.4
    sal = xailab.explain(model, x, 2, method="rise", n_masks=2000, cell=4, p=p, seed=0)
    prob = torch.softmax(torch.arange(4.0) * 0.3, 0)[2]
    masks = P.rise_masks(2000, 32, cell=4, p=p, seed=0)
    torch.testing.assert_close(sal[0], prob * masks.mean(0) / p, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sal[0], sal[1])
    # E[M] = p, so the map is flat at the constant probability
    assert (sal / prob - 1).abs().max() < 0.12
    assert abs((sal / prob).mean().item() - 1) < 0.01


def test_rise_linear_model_identity():
    """f(x * M) = sum w x M + b is linear in the mask, so S = (M^T M (w x) + b M^T 1) / (N p)."""
    torch.manual_seed(0)
    h = 16
    lin = nn.Sequential(nn.Flatten(), nn.Linear(3 * h * h, 3))
    x = torch.rand(1, 3, h, h)
    n, p = 500, 0.5
    sal = xailab.explain(lin, x, 1, method="rise", n_masks=n, cell=4, p=p, seed=2, output="logit")[0]
    m = P.rise_masks(n, h, cell=4, p=p, seed=2).view(n, -1).double()
    w = lin[1].weight[1].detach().double().view(3, -1)
    v = (w * x.double().view(3, -1)).sum(0)
    scores = m @ v + lin[1].bias[1].double()
    want = (scores @ m / (n * p)).view(h, h)
    torch.testing.assert_close(sal.double(), want, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- LIME / Kernel SHAP
def _share(h, region):
    pos = h.clamp(min=0)
    return float((pos * region).sum() / pos.sum())


def test_lime_matches_lime_package_seeded_and_on_object(net, imgs, small_objects):
    from lime.lime_image import LimeImageExplainer

    i = small_objects[0]
    x, t = imgs.images([i]), int(imgs.labels[i])
    seg = S.superpixels(x)
    heat, (exp,) = S.lime_explanations(net, x, t, n_samples=300, seed=3, segmentation=seg)
    assert torch.equal(heat, xailab.explain(net, x, t, method="lime", n_samples=300, seed=3, segmentation=seg))
    assert heat.shape == (1, 64, 64)
    # the same call on the lime package directly
    fn = S._image_batch_fn(net, x.device, x.dtype, t, 100, all_classes=True)
    with S._quiet_lime_progress():
        direct = LimeImageExplainer(random_state=3).explain_instance(
            x[0].permute(1, 2, 0).double().numpy(), fn, labels=(t,), top_labels=None, hide_color=0.0,
            num_features=1000, num_samples=300, segmentation_fn=lambda im: seg[0].numpy(), random_seed=3)
    weights = dict(direct.local_exp[t])
    want = torch.tensor([weights.get(int(s), 0.0) for s in seg[0].flatten()]).view(64, 64).float()
    torch.testing.assert_close(heat[0], want, rtol=1e-5, atol=1e-6)
    again = xailab.explain(net, x, t, method="lime", n_samples=300, seed=3, segmentation=seg)
    assert torch.equal(heat, again)
    obj = imgs.ground_truth(i)["mask"].float()
    assert _share(heat[0], obj) > 1.5 * obj.mean().item()


def test_kernel_shap_efficiency_seeded_and_on_object(net, imgs, small_objects):
    idx = small_objects[1:3]
    x, t = imgs.images(idx), imgs.labels[idx]
    heat = xailab.explain(net, x, t, method="kernel_shap", n_samples=300, seed=0)
    assert heat.shape == (2, 64, 64)
    assert torch.equal(heat, xailab.explain(net, x, t, method="kernel_shap", n_samples=300, seed=0))
    state = np.random.get_state()[1].copy()
    xailab.explain(net, x[:1], t[:1], method="kernel_shap", n_samples=100, seed=1)
    assert np.array_equal(state, np.random.get_state()[1])          # numpy's global RNG untouched
    seg = S.superpixels(x)
    with torch.no_grad():
        full = net(x).softmax(1)[torch.arange(2), t]
        hidden = net(torch.zeros_like(x)).softmax(1)[torch.arange(2), t]
    for i in range(2):
        k = int(seg[i].max()) + 1
        phi = torch.stack([heat[i][seg[i] == j][0] for j in range(k)])
        # Shapley efficiency: the values add up to f(x) - f(everything hidden)
        assert abs(phi.sum().item() - (full[i] - hidden[i]).item()) < 1e-4
        obj = imgs.ground_truth(idx[i])["mask"].float()
        assert _share(heat[i], obj) > 1.5 * obj.mean().item()


# ----------------------------------------------------------------------------- anchors
@pytest.mark.parametrize("p_hat,n", [(0.0, 10), (0.3, 10), (0.9, 50), (1.0, 200)])
def test_kl_bounds_sit_on_the_edge_of_the_kl_ball(p_hat, n):
    def kl(p, q):                                   # Bernoulli KL, with 0 log 0 = 0
        term = lambda a, b: 0.0 if a == 0 else a * math.log(a / b)
        return term(p, q) + term(1 - p, 1 - q)
    level = math.log(1 / 0.1) / n
    lo, hi = kl_lower_bound(p_hat, n, 0.1), kl_upper_bound(p_hat, n, 0.1)
    assert 0 <= lo <= p_hat <= hi <= 1
    for q, free_end in ((lo, 0.0), (hi, 1.0)):
        assert n * kl(p_hat, q) <= math.log(1 / 0.1) * (1 + 1e-6)
        if q != free_end and q != p_hat:            # an inner edge: the ball ends right there
            assert kl(p_hat, q) == pytest.approx(level, rel=1e-6)
    assert (kl_lower_bound(p_hat, 0), kl_upper_bound(p_hat, 0)) == (0.0, 1.0)


def test_anchor_finds_the_watermark_with_precision(shortcut_net):
    ds = data.shapes("test", 16, shortcut=True)
    i = next(j for j in range(16) if ds.watermarked[j] and ds.labels[j] != 5)
    x = ds.images([i])
    a = anchor_explanation(shortcut_net, x, threshold=0.95, seed=0)
    assert a.reached and a.precision >= 0.95 and a.precision_lower >= 0.95
    assert 0 < a.coverage <= 1 and a.label == int(shortcut_net(x).argmax())
    wm = ds.ground_truth(i)["watermark"]
    assert (a.mask & wm).sum() >= 0.8 * wm.sum()           # the anchor is the shortcut
    # fresh samples from D(z | anchor) confirm the precision
    seg = a.superpixels
    k = int(seg.max()) + 1
    gen = torch.Generator().manual_seed(123)
    z = torch.rand(400, k, generator=gen) < 0.5
    z[:, a.segments] = True
    fill = S._superpixel_fill(x[0], seg, torch.zeros_like(x[0]))
    with torch.no_grad():
        prec = (shortcut_net(fill(z.float())).argmax(1) == a.label).float().mean().item()
    assert prec >= 0.95 - 0.03
    heat = xailab.explain(shortcut_net, x, method="anchors", seed=0)
    assert heat.shape == (1, 64, 64) and torch.equal(heat[0].bool(), a.mask)


# ----------------------------------------------------------------------------- contract
def test_registered():
    for name in ("occlusion", "rise", "lime", "kernel_shap", "anchors"):
        assert name in xailab.methods()
        assert "perturbation" in xailab.describe(name)


@pytest.mark.parametrize("method,kw", [
    ("occlusion", dict(window=16, stride=16)), ("rise", dict(n_masks=20)),
    ("lime", dict(n_samples=20)), ("kernel_shap", dict(n_samples=30)),
    ("anchors", dict(max_size=1, n_samples=4, n_confirm=4, confirm_rounds=1))])
def test_nothing_leaks(net, imgs, method, kw):
    x = imgs.images([0])
    before = hooks.Snapshot.of(net)
    net.train()
    flags = hooks.Snapshot.of(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # anchors warn when max_size=1 cannot reach the threshold
        out = xailab.explain(net, x, method=method, **kw)
    assert out.shape == (1, 64, 64) and torch.isfinite(out).all()
    assert flags.diff(net) == []
    with pytest.raises(ValueError):
        xailab.explain(net, x, 99, method=method, **kw)
    assert flags.diff(net) == []
    net.eval()
    assert before.diff(net) == []


@pytest.mark.parametrize("kw,match", [
    (dict(method="occlusion", window=80), "larger than the image"),
    (dict(method="occlusion", stride=0), "stride"),
    (dict(method="occlusion", window=4, stride=8), "stride"),
    (dict(method="occlusion", batch_size=0), "batch_size"),
    (dict(method="rise", n_masks=0), "n_masks"),
    (dict(method="rise", p=0.0), "p "),
    (dict(method="rise", cell=100), "cell"),
    (dict(method="lime", n_samples=0), "n_samples"),
    (dict(method="kernel_shap", n_samples=-3), "n_samples"),
])
def test_bad_options(net, imgs, kw, match):
    with pytest.raises(ValueError, match=match):
        xailab.explain(net, imgs.images([0]), **kw)


def test_bad_inputs(net, imgs):
    with pytest.raises(ValueError, match="batch dimension"):
        xailab.explain(net, imgs.images([0])[0], method="occlusion")
    with pytest.raises(ValueError, match="out of range"):
        xailab.explain(net, imgs.images([0]), 6, method="rise", n_masks=10)
    with pytest.raises(TypeError):
        xailab.explain(net, np.zeros((1, 3, 64, 64)), method="occlusion")


@pytest.mark.parametrize("method,kw", [
    ("occlusion", dict(window=32, stride=32)), ("rise", dict(n_masks=16)),
    ("lime", dict(n_samples=16)), ("kernel_shap", dict(n_samples=20)),
    ("anchors", dict(max_size=1, n_samples=4, n_confirm=4, confirm_rounds=1))])
def test_every_method_runs_on_a_torchvision_model(resnet, method, kw):
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    before = hooks.Snapshot.of(resnet)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = xailab.explain(resnet, x, 7, method=method, **kw)
    assert out.shape == (1, 64, 64) and torch.isfinite(out).all()
    assert before.diff(resnet) == []
