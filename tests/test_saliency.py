"""Gradient saliency: equal to Captum on four architectures, the papers' identities,
nothing leaks, clear errors."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from captum.attr import (Deconvolution, GuidedBackprop, InputXGradient, IntegratedGradients,
                         NoiseTunnel, Saliency)
from torch import nn

import xailab
from xailab import hooks, models
from xailab.attribution import saliency
from xailab.data import shapes

METHODS = ["gradient", "gradient_x_input", "smoothgrad", "integrated_gradients",
           "guided_backprop", "deconvnet"]
ARCHS = ["shapesnet", "shapesvgg", "resnet18", "vgg11"]


@pytest.fixture(scope="module", params=ARCHS)
def arch(request):
    """(model, two 64x64 images, two different targets) for each architecture."""
    torch.manual_seed(0)
    name = request.param
    model = models.load(name) if name.startswith("shapes") else models.load_torchvision(name)
    return name, model, shapes("test", 2, seed=7).images(), torch.tensor([2, 4])


def assert_same(got, want, rtol=1e-5):
    """Equal up to rtol relative to the largest magnitude of the reference (never all zero)."""
    assert got.shape == want.shape
    scale = want.abs().max()
    assert scale > 0
    err = float((got - want).abs().max() / scale)
    assert err <= rtol, f"relative error {err:.2e}"


def test_all_registered_in_the_gradient_family():
    assert set(METHODS) <= set(xailab.methods("gradient"))


def test_equal_to_captum(arch):
    name, model, x, t = arch
    before = hooks.Snapshot.of(model)
    ours = {m: xailab.explain(model, x, t, method=m, reduce=None)
            for m in ["gradient", "gradient_x_input", "guided_backprop", "deconvnet"]}
    x_ = x.clone().requires_grad_(True)
    assert_same(ours["gradient"], Saliency(model).attribute(x_, target=t, abs=False))
    assert_same(ours["gradient_x_input"], InputXGradient(model).attribute(x_, target=t))
    with hooks.out_of_place_relus(model):    # Captum refuses in-place ReLUs (resnet18, vgg11)
        gb = GuidedBackprop(model).attribute(x_, target=t)
        dc = Deconvolution(model).attribute(x_, target=t)
    assert_same(ours["guided_backprop"], gb)
    assert_same(ours["deconvnet"], dc)
    # the ReLU rules really changed the backward pass
    for m in ("guided_backprop", "deconvnet"):
        assert (ours[m] - ours["gradient"]).abs().max() > 1e-3 * ours["gradient"].abs().max()
    assert (ours["guided_backprop"] - ours["deconvnet"]).abs().max() > 0
    assert before.diff(model) == []


def test_integrated_gradients_equal_to_captum(arch):
    """Same points in the same batches (a float difference in the last bit can flip a
    max-pool tie, so batches of different sizes need not agree to 1e-5)."""
    name, model, x, t = arch
    ig = IntegratedGradients(model)
    rules = ["left", "right", "middle", "gausslegendre"] if name.startswith("shapes") else ["gausslegendre"]
    for rule in rules:
        method = rule if rule == "gausslegendre" else "riemann_" + rule
        # 2 images, 4 per pass: 2 steps per pass, 3 passes
        got = xailab.explain(model, x, t, "integrated_gradients", reduce=None, n_steps=6, rule=rule,
                             batch_size=4)
        assert_same(got, ig.attribute(x, target=t, n_steps=6, method=method, internal_batch_size=4))
    # Captum's names work too; defaults are Captum's (50 steps, Gauss-Legendre)
    if name == "shapesnet":
        got = xailab.explain(model, x, t, "integrated_gradients", reduce=None, rule="riemann_right",
                             n_steps=6, batch_size=4)
        assert_same(got, ig.attribute(x, target=t, n_steps=6, method="riemann_right", internal_batch_size=4))
        assert_same(xailab.explain(model, x, t, "integrated_gradients", reduce=None), ig.attribute(x, target=t))
        with pytest.warns(DeprecationWarning, match="n_steps"):     # the old name, for one release
            old = xailab.explain(model, x, t, "integrated_gradients", reduce=None, steps=6)
        assert torch.equal(old, xailab.explain(model, x, t, "integrated_gradients", reduce=None, n_steps=6))


@pytest.mark.parametrize("rule", ["right", "gausslegendre"])
def test_integrated_gradients_splits_images_when_the_batch_is_small(shapesnet, rule):
    x, t = shapes("test", 2, seed=7).images(), torch.tensor([2, 4])
    method = rule if rule == "gausslegendre" else "riemann_" + rule
    got = xailab.explain(shapesnet, x, t, "integrated_gradients", reduce=None, n_steps=5, rule=rule,
                         batch_size=1)
    want = torch.cat([IntegratedGradients(shapesnet).attribute(x[i:i + 1], target=t[i:i + 1], n_steps=5,
                                                               method=method, internal_batch_size=1)
                      for i in range(2)])
    assert_same(got, want)


def test_integrated_gradients_trapezoid_is_captums_rescaled(shapesnet):
    """Captum's riemann_trapezoid weighs the n points by 1/n (ends 1/2n): its weights sum to
    (n-1)/n. Ours integrates exactly, so Captum's result is ours times (n-1)/n."""
    x, t = shapes("test", 2, seed=7).images(), torch.tensor([2, 4])
    n = 7
    want = IntegratedGradients(shapesnet).attribute(x, target=t, n_steps=n, method="riemann_trapezoid")
    got = xailab.explain(shapesnet, x, t, "integrated_gradients", reduce=None, n_steps=n, rule="trapezoid")
    assert_same(got * (n - 1) / n, want)
    assert (got - want).abs().max() > 1e-3 * want.abs().max()


@pytest.mark.parametrize("rule", ["left", "right", "middle", "trapezoid", "gausslegendre"])
def test_quadrature_rules(rule):
    alphas, w = saliency.ig_rule(rule, 20)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    assert float(alphas.min()) >= 0 and float(alphas.max()) <= 1
    exact_tol = {"left": 0.06, "right": 0.06, "middle": 1e-3, "trapezoid": 1e-3, "gausslegendre": 1e-12}
    assert float((w * alphas ** 2).sum()) == pytest.approx(1 / 3, abs=exact_tol[rule])


def test_integrated_gradients_completeness(shapesnet):
    """Sum of attributions = f(x) - f(baseline) within 1% at 64 steps (Sundararajan et al.)."""
    x = shapes("test", 4, seed=123).images()
    with torch.no_grad():
        t = shapesnet(x).argmax(1)
    # the bar: 64 steps from the default black baseline; the grey baseline's path
    # crosses more ReLU kinks on this model and needs 256 steps for the same 1%
    for baseline, steps in ((None, 64), (0.5, 256)):
        base = torch.zeros_like(x) if baseline is None else torch.full_like(x, baseline)
        with torch.no_grad():
            gap = (shapesnet(x) - shapesnet(base)).gather(1, t[:, None])[:, 0]
        attr = xailab.explain(shapesnet, x, t, "integrated_gradients", reduce=None, n_steps=steps,
                              baseline=baseline)
        err = (attr.sum((1, 2, 3)) - gap).abs()
        # 1% of the gap where the score really moves; where f(x) ~ f(baseline) a relative
        # error divides by almost nothing, so there the absolute error must be tiny instead
        big = gap.abs() >= 1
        assert big.sum() >= 2, "pick images whose score differs from the baseline's"
        assert (err[big] / gap[big].abs()).max() < 0.01, f"baseline {baseline}: {err.tolist()} vs {gap.tolist()}"
        assert (err[~big] < 0.05).all(), f"baseline {baseline}: absolute completeness error {err.tolist()}"


def _our_noise(x, n, noise, seed):
    """The documented recipe: sample by sample, torch.randn(x.shape) from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    sigma = noise * (x.amax((1, 2, 3)) - x.amin((1, 2, 3))).view(-1, 1, 1, 1)
    return torch.stack([x + sigma * torch.randn(x.shape, generator=g) for _ in range(n)])  # [n,N,...]


@pytest.mark.parametrize("squared", [False, True])
def test_smoothgrad_equal_to_noise_tunnel_with_the_same_noise(arch, squared, monkeypatch):
    name, model, x, t = arch
    x = x.clone()
    x[1] = 0.2 + 0.5 * x[1]                # a different range: a different sigma
    n, noise, seed = 4, 0.2, 11
    noisy = _our_noise(x, n, noise, seed)
    # Captum draws one sample of every image per pass (nt_samples_batch_size=1) and adds its
    # own noise: hand it ours, sample by sample; ours runs the same batches (2 images per pass)
    samples = iter(noisy)
    monkeypatch.setattr(NoiseTunnel, "_add_noise_to_input",
                        staticmethod(lambda inp, stdev, k: next(samples)))
    want = NoiseTunnel(Saliency(model)).attribute(
        x, nt_type="smoothgrad_sq" if squared else "smoothgrad", nt_samples=n, stdevs=1.0,
        nt_samples_batch_size=1, target=t, abs=False)
    got = xailab.explain(model, x, t, "smoothgrad", reduce=None, n_samples=n, noise=noise, seed=seed,
                         squared=squared, batch_size=2)
    assert_same(got, want)


def test_smoothgrad_seed_batching_and_noise_free_limit(shapesnet):
    x, t = shapes("test", 3, seed=7).images(), torch.tensor([0, 1, 2])
    run = lambda **kw: xailab.explain(shapesnet, x, t, "smoothgrad", reduce=None, n_samples=6, **kw)
    a = run(seed=1, batch_size=64)
    assert torch.allclose(a, run(seed=1, batch_size=2), rtol=1e-4, atol=1e-4 * float(a.abs().max()))
    assert not torch.allclose(a, run(seed=2))
    torch.manual_seed(0)
    b = run()                              # seed=None: the global generator
    torch.manual_seed(0)
    assert torch.equal(b, run())
    assert_same(run(noise=0.0), xailab.explain(shapesnet, x, t, "gradient", reduce=None))
    assert (run(seed=1, squared=True) >= 0).all()


def test_default_heatmap_is_max_abs_over_channels(shapesnet):
    x = shapes("test", 1, seed=7).images()
    for m in METHODS:
        kw = dict(seed=0, n_samples=2) if m == "smoothgrad" else dict(n_steps=4) if m == "integrated_gradients" else {}
        raw = xailab.explain(shapesnet, x, None, method=m, reduce=None, **kw)
        heat = xailab.explain(shapesnet, x, None, method=m, **kw)
        assert heat.shape == (1, 64, 64)
        assert torch.equal(heat, raw.abs().amax(1))
        assert torch.equal(xailab.explain(shapesnet, x, None, method=m, reduce="sum", **kw), raw.sum(1))
    assert torch.equal(xailab.explain(shapesnet, x, 1, "gradient", reduce=None, abs=True),
                       xailab.explain(shapesnet, x, 1, "gradient", reduce=None).abs())


def test_in_place_relus_work_and_are_restored():
    torch.manual_seed(0)
    model = models.load_torchvision("resnet18", num_classes=6)
    inplace = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU) and m.inplace]
    assert inplace
    x = shapes("test", 1, seed=7).images()
    before = hooks.Snapshot.of(model)
    for m in ("guided_backprop", "deconvnet"):
        xailab.explain(model, x, 3, method=m)
        assert before.diff(model) == []
    assert all(m.inplace for n, m in model.named_modules() if n in inplace)


class FunctionalReLUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = F.relu(self.conv(x))           # no hook can reach this one
        return self.fc(self.act(h).mean((2, 3)))


def test_functional_relu_warns_and_still_matches_captum():
    torch.manual_seed(0)
    model = FunctionalReLUNet().eval()
    x = torch.rand(2, 3, 8, 8)
    for m in ("guided_backprop", "deconvnet"):
        with pytest.warns(UserWarning, match="as a function"):
            got = xailab.explain(model, x, 1, method=m, reduce=None)
        ref = (GuidedBackprop if m == "guided_backprop" else Deconvolution)(model)
        assert_same(got, ref.attribute(x.clone().requires_grad_(True), target=1))


def test_no_warning_when_every_relu_is_a_module(shapesnet):
    x = shapes("test", 1, seed=7).images()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xailab.explain(shapesnet, x, 0, "guided_backprop")


@pytest.mark.parametrize("method", METHODS)
def test_nothing_leaks_on_success_or_error(method):
    torch.manual_seed(0)
    model = models.load_torchvision("resnet18", num_classes=6)
    model.train()                          # a mode the method must restore
    model.net.fc.weight.requires_grad_(False)
    x = shapes("test", 2, seed=7, size=32).images()
    kw = dict(n_samples=2) if method == "smoothgrad" else dict(n_steps=2) if method == "integrated_gradients" else {}
    before = hooks.Snapshot.of(model)
    xailab.explain(model, x, 1, method=method, **kw)
    assert before.diff(model) == []
    with pytest.raises(ValueError, match="out of range"):
        xailab.explain(model, x, 6, method=method, **kw)
    assert before.diff(model) == []
    # an error raised inside the backward-hook context (the model's output is not class scores)
    bad = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU(inplace=True))
    bad.classes = ["a", "b", "c"]
    before = hooks.Snapshot.of(bad)
    with pytest.raises(ValueError, match="class scores"):
        xailab.explain(bad, x, 1, method=method, **kw)
    assert before.diff(bad) == []


@pytest.mark.parametrize("call, match", [
    (lambda m, x: xailab.explain(m, x[0], 0, "gradient"), "batch dimension"),
    (lambda m, x: xailab.explain(m, x * 255, 0, "gradient"), r"\[0, 1\]"),
    (lambda m, x: xailab.explain(m, x, 0, "gradient", reduce="median"), "reduce"),
    (lambda m, x: xailab.explain(m, x, 0, "integrated_gradients", rule="simpson"), "trapezoid"),
    (lambda m, x: xailab.explain(m, x, 0, "integrated_gradients", n_steps=0), "n_steps"),
    (lambda m, x: xailab.explain(m, x, 0, "integrated_gradients", rule="trapezoid", n_steps=1), "n_steps >= 2"),
    (lambda m, x: xailab.explain(m, x, 0, "integrated_gradients", baseline=torch.zeros(3, 5, 5)), "baseline"),
    (lambda m, x: xailab.explain(m, x, 0, "smoothgrad", noise=-0.1), "fraction"),
    (lambda m, x: xailab.explain(m, x, 0, "smoothgrad", n_samples=0), "n_samples"),
    (lambda m, x: xailab.explain(m, x, 0, "smoothgrad", batch_size=2.5), "batch_size"),
    (lambda m, x: xailab.explain(m, x, [0, 1, 2], "gradient"), "3 entries"),
])
def test_bad_inputs_give_clear_errors(shapesnet, call, match):
    x = shapes("test", 2, seed=7).images()
    before = hooks.Snapshot.of(shapesnet)
    with pytest.raises(ValueError, match=match):
        call(shapesnet, x)
    assert before.diff(shapesnet) == []
