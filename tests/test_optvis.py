"""xailab.optvis: the measured outcomes of lectures 03 and 07, references, and model hygiene."""
import json

import pytest
import torch
from torch import nn

from xailab import hooks, optvis
from xailab.data import shapes


@pytest.fixture(autouse=True)
def no_step_cap(monkeypatch):
    """The outcomes below are measured at the stated step counts, whatever CI caps."""
    monkeypatch.delenv(optvis.STEPS_ENV, raising=False)


LAYERS = ("features.block1", "features.block2", "features.block3")


@pytest.fixture(scope="module")
def sample_means(shapesnet):
    """Mean activation of every channel of the three blocks on a 1,000-image sample."""
    x = shapes("test", 1000, seed=1).images()
    with hooks.record(shapesnet, list(LAYERS)) as rec, torch.no_grad():
        shapesnet(x)
    return {name: rec.activations[name].mean((2, 3)) for name in LAYERS}


def test_class_model_is_classified_as_its_class_for_every_class(shapesnet):
    before = hooks.Snapshot.of(shapesnet)
    images = optvis.class_images(shapesnet)                # all six classes in one batch
    single = optvis.class_image(shapesnet, 5)              # the hardest class (heart) alone
    assert before.diff(shapesnet) == []
    assert single.shape == (3, 64, 64)
    with torch.no_grad():
        assert float(shapesnet(single[None]).softmax(1)[0, 5]) >= 0.9
    assert images.shape == (6, 3, 64, 64) and images.min() >= 0 and images.max() <= 1
    with torch.no_grad():
        p = shapesnet(images).softmax(1).diagonal()
    assert (p >= 0.9).all(), p


@pytest.mark.parametrize("layer,ch", [("features.block1", 0), ("features.block2", 0),
                                      ("features.block3", 2), ("features.block3", 12)])
def test_channel_image_beats_every_image_of_a_1000_image_sample(shapesnet, sample_means, layer, ch):
    img = optvis.channel_image(shapesnet, layer, ch, steps=24)
    data = sample_means[layer][:, ch]
    ours = optvis.channel_activations(shapesnet, layer, ch, img[None])
    assert len(data) == 1000 and float(ours) > float(data.max())


INVERTED = ("features.block1.conv2", "features.block2.conv2", "features.block3.conv1",
            "features.block3.conv2")


def test_inversion_matches_features_and_pixel_error_grows_with_depth(shapesnet):
    x = shapes("test", 1, seed=3).images()[0]
    before = hooks.Snapshot.of(shapesnet)
    feat, pix = [], []
    for layer in INVERTED:                          # after 0, 1, 2 max-poolings, then the last conv
        r = optvis.invert(shapesnet, layer, x)
        feat.append(optvis.feature_error(shapesnet, layer, r, x))
        pix.append(float((r - x).norm() / x.norm()))
    assert before.diff(shapesnet) == []
    assert max(feat) < 0.1, feat
    assert pix[0] < pix[1] < pix[2] < pix[3], pix
    # the TV prior makes the reconstruction smoother than one without it
    r0 = optvis.invert(shapesnet, "features.block1.conv2", x, steps=30, tv_weight=0.0)
    r1 = optvis.invert(shapesnet, "features.block1.conv2", x, steps=30, tv_weight=1.0)
    assert optvis.total_variation(r1[None]) < optvis.total_variation(r0[None])


def test_inversion_reaches_every_block_output_of_both_models(shapesnet):
    """After batch norm, ReLU and max-pooling too (about 50 s at one thread on a loaded machine)."""
    from xailab import models
    x = shapes("test", 1, seed=3).images()[0]
    errors = {}
    for model in (shapesnet, models.load("shapesvgg")):
        for layer in ("features.block1", "features.block2", "features.block3"):
            r = optvis.invert(model, layer, x)
            errors[type(model).__name__, layer] = optvis.feature_error(model, layer, r, x)
    assert max(errors.values()) < 0.1, errors


def test_undoing_the_last_convolution_first_is_what_reaches_the_deep_layer(shapesnet):
    x = shapes("test", 1, seed=3).images()[0]
    layer = "features.block3.conv2"
    direct = optvis.feature_error(shapesnet, layer, optvis.invert(shapesnet, layer, x, through_conv=False), x)
    through = optvis.feature_error(shapesnet, layer, optvis.invert(shapesnet, layer, x), x)
    assert through < 0.1 < direct, (through, direct)


@pytest.mark.parametrize("nonnegative", [False, True])
def test_conv_input_is_the_least_squares_solution(nonnegative):
    from scipy.optimize import lsq_linear, nnls
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3, padding=1)             # more outputs than inputs: one solution
    shape = (1, 3, 5, 5)
    out = conv(torch.randn(shape)).detach()          # signed input: the constraint r >= 0 binds
    # the reference: the convolution as an explicit matrix, solved by scipy
    basis = torch.eye(75).view(75, *shape[1:])
    a = (conv(basis) - conv.bias.view(1, -1, 1, 1)).detach().flatten(1).T.double().numpy()
    b = (out - conv.bias.view(1, -1, 1, 1)).detach().flatten().double().numpy()
    want = nnls(a, b)[0] if nonnegative else lsq_linear(a, b).x
    got = optvis.conv_input(conv, out, shape, nonnegative=nonnegative, steps=3000)
    assert got.shape == shape and (not nonnegative or got.min() >= 0)

    def residual(r):
        return float(((a @ r - b) ** 2).sum() / (b ** 2).sum())
    assert abs(residual(got.flatten().double().numpy()) - residual(want)) < 1e-4, \
        (residual(got.flatten().double().numpy()), residual(want))
    assert (residual(want) > 1e-3) == nonnegative      # only the constrained problem has no exact fit


def test_conv_input_rejects_mismatched_shapes():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    out = torch.zeros(1, 4, 8, 8)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        optvis.conv_input(conv, out, (1, 5, 8, 8))
    with pytest.raises(ValueError, match="output has shape"):
        optvis.conv_input(conv, out, (1, 3, 6, 6))
    with pytest.raises(TypeError, match="Conv2d"):
        optvis.conv_input(nn.Linear(3, 4), out, (1, 3, 8, 8))


def test_learned_decoder_beats_the_mean_image_on_held_out_images(shapesnet):
    train = shapes("train", 600, seed=5).images()
    held = shapes("test", 100, seed=6).images()
    before = hooks.Snapshot.of(shapesnet)
    dec = optvis.train_decoder(shapesnet, "features.block1", train, epochs=2, width=32, progress=False)
    assert before.diff(shapesnet) == []
    rec = optvis.decode(shapesnet, "features.block1", dec, held)
    assert rec.shape == held.shape
    mse = float((rec - held).pow(2).mean())
    mean_mse = float((train.mean(0, keepdim=True) - held).pow(2).mean())
    assert mse < 0.8 * mean_mse, (mse, mean_mse)
    # what is lost at depth (lecture 07): a block3 decoder does worse, yet beats the mean image
    deep = optvis.train_decoder(shapesnet, "features.block3", train, epochs=2, width=32, progress=False)
    deep_mse = float((optvis.decode(shapesnet, "features.block3", deep, held) - held).pow(2).mean())
    assert mse < 0.7 * deep_mse and deep_mse < mean_mse, (mse, deep_mse, mean_mse)


def test_decoder_history_records_training_and_held_out_loss_per_epoch(shapesnet):
    train = shapes("train", 64, seed=5).images()
    held = shapes("test", 16, seed=6).images()
    history = {}
    dec = optvis.train_decoder(shapesnet, "features.block3.conv2", train, epochs=3, width=8, progress=False,
                               held_out=held, history=history, lr_decay=True)
    assert len(history["train"]) == len(history["held_out"]) == 3
    rec = optvis.decode(shapesnet, "features.block3.conv2", dec, held)
    assert history["held_out"][-1] == pytest.approx(float((rec - held).pow(2).mean()), rel=1e-5)


def test_shipped_decoders_match_their_manifest_and_stopped_improving(shapesnet):
    from xailab.optvis import decoders
    _, held = decoders.recipe_images()
    manifest = json.loads(decoders.MANIFEST.read_text())
    for layer in decoders.LAYERS:
        dec, curves = decoders.load_decoder("shapesnet", layer)
        entry = manifest[decoders.decoder_path("shapesnet", layer).stem]
        mse = float((optvis.decode(shapesnet, layer, dec, held) - held).pow(2).mean())
        assert mse == pytest.approx(entry["held_out_mse"], abs=1e-4)
        h = curves["held_out"]
        assert len(h) == entry["recipe"]["epochs"] and abs(h[-1] - h[-4]) < 0.05 * h[-4], (layer, h)


def test_step_cap_from_the_environment(monkeypatch, shapesnet):
    assert optvis.resolve_steps(None, 64) == 64 and optvis.resolve_steps(10, 64) == 10
    monkeypatch.setenv(optvis.STEPS_ENV, "3")
    assert optvis.resolve_steps(None, 64) == 3 and optvis.resolve_steps(2, 64) == 2
    hist = []
    optvis.optimize(shapesnet, optvis.channel("features.block1", 0), steps=50, history=hist, progress=False)
    assert len(hist) == 3
    monkeypatch.setenv(optvis.STEPS_ENV, "many")
    with pytest.raises(ValueError, match="XAILAB_MAX_STEPS"):
        optvis.resolve_steps(None, 64)
    with pytest.raises(ValueError, match="positive"):
        optvis.resolve_steps(0, 64)


def test_objectives_combine_linearly():
    acts = {"a": torch.arange(24.).view(1, 2, 3, 4), "b": torch.ones(1, 3, 2, 2)}
    ctx = optvis.Context(acts, torch.tensor([[1.0, 5.0]]), torch.full((1, 3, 4, 4), 0.75))
    c0, lay = optvis.channel("a", 1), optvis.layer("b")
    assert torch.allclose(c0(ctx), torch.tensor([17.5]))
    assert torch.allclose(optvis.neuron("a", 0, 1, 2)(ctx), torch.tensor([6.0]))
    assert torch.allclose((2 * c0 - lay + 0.5 * optvis.class_logit(1))(ctx), torch.tensor([36.5]))
    assert torch.allclose(sum([c0, lay])(ctx), torch.tensor([18.5]))
    assert torch.allclose(optvis.class_logit(1, l2=2.0)(ctx), torch.tensor([5 - 2 * 0.0625]))
    two = optvis.Context(acts, torch.tensor([[1.0, 5.0], [2.0, 3.0]]), torch.full((2, 3, 4, 4), 0.5))
    assert torch.allclose(optvis.class_logit([1, 0])(two), torch.tensor([5.0, 2.0]))
    assert torch.allclose(optvis.deepdream("a")(ctx), acts["a"].pow(2).mean().view(1))
    assert torch.allclose(optvis.feature_match("a", acts["a"] * 0.5)(ctx), torch.tensor([-1.0]))
    assert set((c0 + lay).layers) == {"a", "b"}


def test_total_variation_is_the_papers_formula():
    x = torch.rand(2, 3, 7, 9, generator=torch.Generator().manual_seed(0))
    for beta in (1.0, 2.0, 3.0):
        want = torch.stack([torch.stack([((x[n, :, i, j + 1] - x[n, :, i, j]) ** 2
                                          + (x[n, :, i + 1, j] - x[n, :, i, j]) ** 2) ** (beta / 2)
                                         for i in range(6) for j in range(8)]).mean() for n in range(2)])
        assert torch.allclose(optvis.total_variation(x, beta), want, atol=1e-5)
    assert float(optvis.total_variation(torch.full((1, 3, 8, 8), 0.3))[0]) < 1e-3


def _separable_blur(x, sigma):
    """A Gaussian blur written out: two 1-D passes, reflect padding, the kernel reaching
    ceil(3 sigma) pixels each side (cut to the image and renormalised)."""
    import math

    import torch.nn.functional as F
    full = max(1, math.ceil(3 * sigma))
    r = min(full, x.shape[-1] - 1, x.shape[-2] - 1)
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


@pytest.mark.parametrize("sigma", [0.3, 0.5, 0.7, 1.0, 2.0])     # the widths the course uses (and 2)
def test_gaussian_blur_is_the_separable_gaussian_with_a_3_sigma_kernel(sigma):
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    assert (optvis.gaussian_blur(x, sigma) - _separable_blur(x, sigma)).abs().max() < 1e-6
    x64 = x.double()                       # the same up to float32 rounding (summation order)
    assert (optvis.gaussian_blur(x64, sigma) - _separable_blur(x64, sigma)).abs().max() < 1e-12
    small = x[:, :, :3, :3]                # the kernel is cut to the image size
    assert (optvis.gaussian_blur(small, sigma) - _separable_blur(small, sigma)).abs().max() < 1e-6
    assert torch.equal(optvis.gaussian_blur(x, 0.0), x)


def test_penalties_are_objectives_on_the_image():
    acts = {"a": torch.arange(24.).view(1, 2, 3, 4)}
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ctx = optvis.Context(acts, torch.tensor([[1.0, 5.0]]), x)
    tv_value = optvis.total_variation(x)
    l2_value = (x - 0.5).pow(2).mean().view(1)
    assert torch.allclose((optvis.channel("a", 1) - 0.1 * optvis.tv())(ctx), 17.5 - 0.1 * tv_value)
    assert torch.allclose((optvis.class_logit(1) - optvis.l2(3.0) - optvis.tv(2.0, beta=1.0))(ctx),
                          5 - 3 * l2_value - 2 * optvis.total_variation(x, 1.0))
    assert torch.allclose(optvis.tv(0.5)(x), 0.5 * tv_value)               # called on the image itself
    assert torch.allclose((optvis.l2() + optvis.tv())(x), l2_value + tv_value)
    with pytest.raises(TypeError, match="Context"):
        optvis.channel("a", 1)(x)


def test_a_penalty_in_the_objective_equals_the_same_penalty_as_a_regulariser(shapesnet):
    run = dict(param=optvis.fourier(), transforms=[optvis.jitter(2)], steps=4, lr=0.1, progress=False)
    obj = optvis.channel("features.block2", 3)
    hist = []
    inside = optvis.optimize(shapesnet, obj - 20.0 * optvis.tv() - optvis.l2(5.0), history=hist, **run)
    outside = optvis.optimize(shapesnet, obj, regularizers=[optvis.tv(20.0), optvis.l2(5.0)], **run)
    as_function = optvis.optimize(shapesnet, obj, regularizers=[lambda im: 20.0 * optvis.total_variation(im),
                                                                 optvis.l2(5.0)], **run)
    assert torch.allclose(inside, outside, atol=1e-5) and torch.allclose(outside, as_function, atol=1e-6)
    plain = optvis.optimize(shapesnet, obj, **run)
    assert optvis.total_variation(inside) < optvis.total_variation(plain)
    assert len(hist) == 4


def test_fourier_set_image_inverts_the_parametrisation():
    g = torch.Generator().manual_seed(0)
    param = optvis.fourier()(2, 32, 32, "cpu", g)
    target = 0.05 + 0.9 * torch.rand(2, 3, 32, 32, generator=g)
    param.set_image(target)
    assert (param() - target).abs().max() < 1e-5
    pixels = optvis.pixels()(2, 32, 32, "cpu", g)
    pixels.set_image(target)
    assert torch.equal(pixels(), target)


@pytest.mark.parametrize("recipe", [optvis.pixels(sd=0.1), optvis.fourier(sd=0.1)])
def test_blur_every_blurs_the_image_whatever_the_parametrisation(shapesnet, recipe):
    param = recipe(1, 64, 64, "cpu", torch.Generator().manual_seed(0))
    with torch.no_grad():
        start = param().clone()
    # with a learning rate of 0 the step changes nothing, so the result is the blurred start
    out = optvis.optimize(shapesnet, optvis.channel("features.block1", 0), param=param, steps=2, lr=0.0,
                          regularizers=[optvis.blur_every(2, 1.0)], progress=False)
    assert (out - optvis.gaussian_blur(start, 1.0)).abs().max() < 1e-5
    # and in a real run it makes a difference (it used to be skipped for the Fourier image)
    run = dict(param=recipe, steps=8, lr=0.1, progress=False)
    blurred = optvis.optimize(shapesnet, optvis.channel("features.block2", 3),
                              regularizers=[optvis.blur_every(2, 1.0)], **run)
    plain = optvis.optimize(shapesnet, optvis.channel("features.block2", 3), **run)
    assert optvis.total_variation(blurred) < 0.5 * optvis.total_variation(plain)


def test_optimize_accepts_a_built_parametrisation_and_keeps_it(shapesnet):
    obj = optvis.channel("features.block2", 3)
    built = optvis.Fourier(1, 32, 32, 0.01, torch.Generator().manual_seed(0))
    first = optvis.optimize(shapesnet, obj, param=built, steps=3, progress=False)
    recipe = optvis.optimize(shapesnet, obj, param=optvis.fourier(), size=32, steps=3, progress=False)
    assert torch.allclose(first, recipe, atol=1e-6)          # same start (seed 0), same steps
    with torch.no_grad():
        assert torch.equal(built().clamp(0, 1), first)
    more = optvis.optimize(shapesnet, obj, param=built, steps=3, progress=False)     # continues from first
    assert float(optvis.channel_activations(shapesnet, "features.block2", 3, more)) > \
        float(optvis.channel_activations(shapesnet, "features.block2", 3, first))


def test_parametrisations_and_transforms_keep_shape_and_range():
    g = torch.Generator().manual_seed(0)
    img = optvis.fourier()(2, 32, 32, "cpu", g)()
    assert img.shape == (2, 3, 32, 32) and 0 < img.min() and img.max() < 1
    x = torch.rand(2, 3, 32, 32, generator=g)
    for t in (optvis.jitter(3), optvis.scale(), optvis.rotate(), optvis.blur(1.0)):
        assert t(x, g).shape == x.shape
    rolled = optvis.jitter(0)(x, g)
    assert torch.equal(rolled, x)


def test_dataset_examples_and_receptive_fields(shapesnet):
    data = shapes("test", 300, seed=2)
    idx, vals = optvis.top_k(shapesnet, "features.block2", 3, data, k=5, batch_size=128)
    brute = optvis.features(shapesnet, "features.block2", data.images())[:, 3].mean((1, 2))
    assert torch.equal(idx, brute.topk(5).indices) and torch.allclose(vals, brute.topk(5).values)
    assert optvis.receptive_field(shapesnet, "features.block1.conv1")[:2] == (3, 1)
    assert optvis.receptive_field(shapesnet, "features.block1")[:2] == (6, 2)
    assert optvis.receptive_field(shapesnet, "features.block3")[:2] == (32, 4)
    patches, boxes, pv = optvis.top_patches(shapesnet, "features.block2", 3, data, k=4)
    assert patches.shape == (4, 3, 16, 16) and len(boxes) == 4 and (pv[:-1] >= pv[1:]).all()
    # the strongest unit's value is reproduced by the patch's image
    a = optvis.features(shapesnet, "features.block2", data.images([boxes[0][0]]))[0, 3]
    assert torch.isclose(a.max(), pv[0])


def test_deconv_projection_matches_captum_deconvolution(shapesnet):
    from captum.attr import Deconvolution
    x = shapes("test", 1, seed=7).images()[0]
    layer, ch = "features.block2", 4
    a = optvis.features(shapesnet, layer, x[None])[0, ch]
    pos = int(a.flatten().argmax())

    class Unit(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, inp):
            with hooks.record(self.model, layer, detach=False) as rec:
                self.model(inp)
            return rec.activations[layer][:, ch].flatten(1)[:, pos:pos + 1]

    before = hooks.Snapshot.of(shapesnet)
    ours = optvis.deconv_projection(shapesnet, layer, ch, x)
    assert before.diff(shapesnet) == []
    for p in shapesnet.parameters():
        p.requires_grad_(False)
    try:
        want = Deconvolution(Unit(shapesnet)).attribute(x[None].clone(), target=0)[0]
    finally:
        for p in shapesnet.parameters():
            p.requires_grad_(True)
    assert ours.abs().sum() > 0
    assert torch.allclose(ours, want, atol=1e-6 * float(want.abs().max()) + 1e-8)


def test_model_comes_back_unchanged_even_on_error(shapesnet):
    shapesnet.train()
    shapesnet.fc.weight.requires_grad_(False)
    try:
        before = hooks.Snapshot.of(shapesnet)

        def boom(ctx):
            raise RuntimeError("boom")
        with pytest.raises(RuntimeError, match="boom"):
            optvis.optimize(shapesnet, optvis.Objective(boom, ["features.block1"]), steps=2, progress=False)
        assert before.diff(shapesnet) == []
        optvis.dream(shapesnet, "features.block2", shapes("test", 1, seed=0).images()[0], steps=2)
        assert before.diff(shapesnet) == []
    finally:
        shapesnet.eval()
        shapesnet.fc.weight.requires_grad_(True)


def test_inversion_through_a_conv_leaves_a_torchvision_model_unchanged():
    from xailab import models
    resnet = models.load_torchvision("resnet18")             # in-place ReLUs, weights=None
    resnet.train()
    resnet.net.fc.weight.requires_grad_(False)
    before = hooks.Snapshot.of(resnet)
    x = shapes("test", 1, seed=0).images()[0]
    r = optvis.invert(resnet, "net.layer1.0.conv2", x, steps=6)
    assert r.shape == x.shape and 0 <= float(r.min()) and float(r.max()) <= 1
    assert before.diff(resnet) == []


def test_bad_input_says_what_to_do(shapesnet):
    with pytest.raises(ValueError, match="class_index"):
        optvis.class_image(shapesnet, 6, steps=1)
    with pytest.raises(KeyError, match="list_layers"):
        optvis.channel_image(shapesnet, "features.block9", 0, steps=1)
    with pytest.raises(ValueError, match=r"\[3,H,W\]"):
        optvis.invert(shapesnet, "features.block1", torch.rand(2, 3, 64, 64), steps=1)
    with pytest.raises(TypeError, match="Objective"):
        optvis.optimize(shapesnet, lambda c: c, steps=1)


def test_out_of_range_units_and_images_say_what_to_do(shapesnet):
    x = shapes("test", 2, seed=1).images()
    before = hooks.Snapshot.of(shapesnet)
    with pytest.raises(ValueError, match=r"features.block3 \(64 channels\) is 64, out of range: use 0..63"):
        optvis.channel_image(shapesnet, "features.block3", 64, steps=1)
    with pytest.raises(ValueError, match=r"x \(features.block3 is 16x16\) is 16, out of range: use 0..15"):
        optvis.optimize(shapesnet, optvis.neuron("features.block3", 0, 3, 16), steps=1, progress=False)
    with pytest.raises(TypeError, match="whole number"):
        optvis.channel_image(shapesnet, "features.block3", 1.5, steps=1)
    with pytest.raises(ValueError, match="out of range"):
        optvis.top_k(shapesnet, "features.block2", 32, x)
    with pytest.raises(ValueError, match="out of range"):
        optvis.top_patches(shapesnet, "features.block2", -1, x)
    with pytest.raises(ValueError, match="out of range"):
        optvis.deconv_projection(shapesnet, "features.block2", 99, x[0])
    with pytest.raises(ValueError, match=r"\[0, 1\].*normalisation"):
        optvis.invert(shapesnet, "features.block1.conv2", (x[0] - 0.5) / 0.25, steps=1)
    with pytest.raises(TypeError, match="float"):
        optvis.dream(shapesnet, "features.block1", (x[0] * 255).byte(), steps=1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        optvis.channel_activations(shapesnet, "features.block1", 0, x * 255)
    with pytest.raises(ValueError, match=r"class index \(6 classes\) is 6, out of range"):
        optvis.optimize(shapesnet, optvis.class_logit(6), steps=1, progress=False)
    with pytest.raises(ValueError, match="out of range"):
        optvis.optimize(shapesnet, optvis.class_logit([0, 9]), steps=1, progress=False, n=2)
    with pytest.raises(ValueError, match=r"optvis.features\(model, 'features.block1'"):
        optvis.optimize(shapesnet, optvis.feature_match("features.block1", torch.rand(1, 5, 8, 8)),
                        steps=1, progress=False)
    with pytest.raises(ValueError, match=r"\[N,3,H,W\].*x\[None\]"):
        optvis.train_decoder(shapesnet, "features.block1", x[0], epochs=1, progress=False)
    with pytest.raises(ValueError, match="train one for this layer"):
        optvis.decode(shapesnet, "features.block1", optvis.Decoder(64, 16), x)
    assert before.diff(shapesnet) == []
    assert float(optvis.channel_activations(shapesnet, "features.block3", 63, x)[0]) == pytest.approx(
        float(optvis.features(shapesnet, "features.block3", x)[0, 63].mean()))


def test_lab_checks_refuse_the_library_and_say_what_is_unfinished(capsys):
    # the full tests of these checks are tests/test_lab03_checks.py and tests/test_lab07_checks.py
    from xailab.checks import core, lab03, lab07

    def not_yet(*args, **kwargs):
        raise NotImplementedError("write it")

    core.reset()
    for check in (lab03.check_ascent_step, lab07.check_total_variation):
        assert not check(not_yet)
        assert "not written yet" in capsys.readouterr().out
    for check in (lab03.check_visualise, lab07.check_feature_loss, lab07.check_invert):
        assert not check(not_yet)                     # the earlier exercise has not passed
        assert "first" in capsys.readouterr().out
    assert not lab07.check_total_variation(optvis.total_variation)
    assert not lab03.check_ascent_step(optvis.ascent_step)
    assert capsys.readouterr().out.count("write this one yourself") == 2
    core.reset()


def test_class_images_without_a_classes_list_asks_for_the_classes():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 3)).eval()
    with pytest.raises(ValueError, match="pass classes="):
        optvis.class_images(net, steps=1)
    assert optvis.class_images(net, classes=[0, 2], steps=1).shape[0] == 2
