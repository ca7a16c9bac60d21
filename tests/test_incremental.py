"""Occlusion by incremental inference equals the plain method (one full forward pass per
occluded image) for every window, stride, baseline, image size and model, borders included."""
import pytest
import torch
from torch import nn

import xailab
from xailab import data, hooks, models
from xailab.attribution import incremental as I
from xailab.attribution import perturbation as P


def both(model, x, t, window, stride, baseline=0.0, batch_size=32, probs=False):
    """(incremental, plain) occlusion maps [N, H, W]."""
    with hooks.frozen(model):
        return [P._occlusion_raw(model, x, t, window, stride, baseline, batch_size, probs, incremental=inc)
                for inc in (True, False)]


def assert_same(model, x, t, window, stride, **kw):
    fast, plain = both(model, x, t, window, stride, **kw)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    assert plain.abs().max() > 1e-3                # not a comparison between zeros
    return fast


@pytest.fixture(scope="module")
def net():
    return models.load("shapesnet")


@pytest.fixture(scope="module")
def images():
    return data.shapes("test", 4, seed=5).images()


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return models.load_torchvision("resnet18")


@pytest.mark.parametrize("window,stride,baseline", [(8, 4, 0.0), (12, 5, 0.5), (10, 10, 1.0), (16, 8, 0.0),
                                                    (7, 3, 0.2), ((9, 14), (4, 7), 0.0), (64, 1, 0.0)])
def test_shapesnet_every_window_and_stride(net, images, window, stride, baseline):
    assert_same(net, images[:2], torch.tensor([1, 4]), window, stride, baseline=baseline)


def test_tensor_baselines_probabilities_and_batch_sizes(net, images):
    x, t = images[:3], torch.tensor([0, 2, 5])
    per_image = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert_same(net, x, t, 8, 6, baseline=per_image)
    assert_same(net, x, t, 12, 12, baseline=torch.tensor([0.2, 0.5, 0.8]).view(3, 1, 1))
    assert_same(net, x, t, 16, 8, probs=True, batch_size=5)
    one = assert_same(net, x, t, 16, 8, batch_size=1)
    torch.testing.assert_close(one, both(net, x, t, 16, 8, batch_size=1000)[0], rtol=1e-5, atol=1e-6)


def test_images_cached_a_few_at_a_time(net, monkeypatch):
    from xailab.attribution import incremental
    monkeypatch.setattr(incremental, "CACHING_IMAGES", 3)      # 7 images: caching passes of 3, 3 and 1
    x = data.shapes("test", 7, seed=6).images()
    per_image = torch.rand(7, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    assert_same(net, x, torch.tensor([0, 1, 2, 3, 4, 5, 0]), 16, 8, baseline=per_image)


def test_128_pixels_and_shapesvgg(net, images):
    x = torch.nn.functional.interpolate(images[:1], size=128, mode="bilinear", align_corners=False)
    assert_same(net, x, torch.tensor([3]), 16, 12)
    # flatten + linear head: local up to the flatten. Its logits reach about 50, where float32
    # rounding alone differs by 1e-5 between any two evaluation orders: compared in float64
    vgg = models.load("shapesvgg").double()
    assert_same(vgg, images[:2].double(), torch.tensor([1, 4]), 8, 6, baseline=0.3)


@pytest.mark.parametrize("size,window,stride", [(64, 8, 8), (64, 16, 12), (128, 16, 16), (96, 12, 10)])
def test_resnet18_residual_blocks(resnet, size, window, stride):
    """Residual sums, strided 1x1 shortcuts (their crop skips rows) and a max pool with padding."""
    torch.manual_seed(size)
    x = torch.rand(1, 3, size, size)
    assert_same(resnet, x, torch.tensor([7]), window, stride)


def test_densenet_concatenations():
    """Dense blocks concatenate lists of maps: a list holding patches is made full first."""
    torch.manual_seed(1)
    densenet = models.load_torchvision("densenet121")
    assert_same(densenet, torch.rand(1, 3, 64, 64), torch.tensor([2]), 16, 16)


def test_the_engine_is_used_and_the_public_method_matches(net, images, resnet):
    x = images[:1]
    boxes = P._window_boxes(64, 64, 8, 8, x.device)
    with hooks.frozen(net), torch.no_grad():
        assert I.local_graph(net, x) is not None and I.local_graph(resnet, x) is not None
        base, scores = I.window_scores(net, x, torch.tensor([1]), boxes, (8, 8), torch.tensor(0.0), 32,
                                       lambda out, t: out.gather(1, t[:, None])[:, 0])
    assert scores.shape == (1, 64) and base.shape == (1,)
    heat = xailab.explain(net, x, 1, method="occlusion", window=8, stride=8)
    torch.testing.assert_close(heat[0], both(net, x, torch.tensor([1]), 8, 8)[1][0], rtol=1e-5, atol=1e-5)


class PositionalSum(nn.Module):
    """A convolution, then a learned map that varies over space (not per-channel: not local
    for the engine), a global pooling in the middle, then more convolutions."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.ReLU(),
                                  nn.AvgPool2d(3, stride=1, padding=1), nn.Conv2d(8, 8, 3, dilation=2,
                                                                                  padding=2))
        self.position = nn.Parameter(torch.randn(1, 8, 32, 32))
        self.pool = nn.AdaptiveAvgPool2d(8)
        self.head = nn.Sequential(nn.Conv2d(8, 4, 3, padding=1), nn.Flatten(), nn.Linear(256, 5))

    def forward(self, x):
        y = self.stem(x * 2 - 1)
        y = torch.relu(y) * 0.5 + y.mean()           # a global statistic of the map: not local
        return self.head(self.pool(y + self.position))


def test_non_local_layers_fall_back_to_full_maps():
    model = PositionalSum().eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    assert_same(model, x, torch.tensor([0, 3]), 8, 4)
    assert_same(model, x, torch.tensor([1, 2]), 12, 7, baseline=0.5)


class Unknown(nn.Module):
    """A module from outside torch/torchvision/xailab: the engine does not trace it."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


def test_untraceable_models_and_hooks_use_the_plain_method(net, images):
    x = images[:1]
    wrapped = Unknown(net)
    with torch.no_grad():
        assert I.local_graph(wrapped, x) is None
        with hooks.forward_hooks(net, {"features.block1": lambda m, i, o: None}):
            assert I.local_graph(net, x) is None
    calls = wrapped.calls
    with hooks.frozen(wrapped):
        P._occlusion_raw(wrapped, x, torch.tensor([1]), 16, 16, 0.0, 8, False)     # incremental if it can
    assert wrapped.calls - calls == 1 + 2        # f(x) and 16 windows in passes of 8: the plain method
