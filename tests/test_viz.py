"""xailab.viz helpers (shapes, ranges, grid layout); the lab 02 checks are tested in
test_lab02_checks.py."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from xailab import viz  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


# ---------------------------------------------------------------- tensor helpers

def test_to_image_layout_and_range():
    x = torch.rand(3, 10, 12) * 1.4 - 0.2
    img = viz.to_image(x)
    assert img.shape == (10, 12, 3) and img.dtype == np.float32
    assert img.min() >= 0 and img.max() <= 1
    inside = (x >= 0) & (x <= 1)
    assert np.allclose(img[inside.permute(1, 2, 0).numpy()], x.permute(1, 2, 0)[inside.permute(1, 2, 0)].numpy())
    assert viz.to_image(x[None]).shape == (10, 12, 3)
    assert viz.to_image(torch.rand(1, 5, 6)).shape == (5, 6)
    with pytest.raises(ValueError, match="one image"):
        viz.to_image(torch.rand(2, 3, 4, 4))
    with pytest.raises(ValueError, match="channels first"):
        viz.to_image(torch.rand(4, 4, 3))


def test_summed_map_sums_channels():
    a = torch.rand(2, 5, 4, 3)
    s = viz.summed_map(a)
    assert s.shape == (2, 4, 3)
    assert torch.allclose(s, a[:, 0] + a[:, 1] + a[:, 2] + a[:, 3] + a[:, 4])
    assert viz.summed_map(a[0]).shape == (4, 3)


def test_upsample_ranks_sizes_and_bilinear():
    m = torch.rand(2, 3, 4, 4)
    assert viz.upsample(m, 8).shape == (2, 3, 8, 8)
    assert viz.upsample(m[:, 0], (8, 6)).shape == (2, 8, 6)
    assert viz.upsample(m[0, 0], 16).shape == (16, 16)
    want = F.interpolate(m[:, :1], size=(8, 8), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(viz.upsample(m[:, 0], 8), want)
    assert torch.allclose(viz.upsample(torch.full((1, 3, 3), 2.5), 9), torch.full((1, 9, 9), 2.5))


def test_normalize_each_map_to_unit_range_and_flat_maps_to_zero():
    m = torch.stack([torch.rand(5, 5) * 10 - 3, torch.rand(5, 5) * 0.01, torch.full((5, 5), 7.0)])
    n = viz.normalize(m)
    assert not torch.isnan(n).any()
    for i in range(2):
        assert n[i].min() == 0 and abs(float(n[i].max()) - 1) < 1e-5
    assert torch.equal(n[2], torch.zeros(5, 5))


def test_heatmap_is_summed_upsampled_normalised():
    a = torch.rand(3, 6, 4, 4)
    h = viz.heatmap(a, 16)
    assert h.shape == (3, 16, 16)
    assert torch.allclose(h.amin((1, 2)), torch.zeros(3)) and torch.allclose(h.amax((1, 2)), torch.ones(3))
    s = F.interpolate(a.sum(1, keepdim=True), size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    ref = (s - s.amin((1, 2), keepdim=True)) / (s.amax((1, 2), keepdim=True) - s.amin((1, 2), keepdim=True))
    assert torch.allclose(h, ref, atol=1e-6)


def test_strongest_channels_rank_by_mean_activation():
    a = torch.zeros(2, 5, 3, 3)
    a[0, 3] = 4.0
    a[0, 1] = 2.0
    a[0, 4, 0, 0] = 9.0          # a single hot pixel: mean 1.0
    a[1, 0] = 1.0
    idx = viz.strongest_channels(a, k=3)
    assert idx.dtype == torch.long and idx.shape == (2, 3)
    assert idx[0].tolist() == [3, 1, 4]
    assert int(idx[1, 0]) == 0
    assert viz.strongest_channels(a[0], k=2).tolist() == [3, 1]
    assert viz.strongest_channels(a, k=50).shape == (2, 5)          # k larger than C: all channels


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tensor_helpers_stay_on_the_input_device():
    a = torch.rand(2, 4, 5, 5, device="cuda")
    for out in (viz.summed_map(a), viz.upsample(a, 10), viz.normalize(a), viz.heatmap(a, 10),
                viz.strongest_channels(a, 2)):
        assert out.device == a.device
    viz.feature_grid(a[0])           # plotting moves to the CPU itself


# ---------------------------------------------------------------- tile and figures

def test_tile_layout_padding_and_scaling():
    maps = torch.stack([torch.full((4, 3), float(i)) for i in range(5)])
    maps[:, 0, 0] = -1.0                                   # each map: one low pixel, rest = i
    grid = viz.tile(maps, ncols=3, pad=1)
    assert grid.shape == (2 * 4 + 1, 3 * 3 + 2)            # rows*(H+pad)-pad, cols*(W+pad)-pad
    # map i sits at row i // 3, column i % 3; scaled on its own: low pixel 0, the rest 1
    for i in range(5):
        r, c = divmod(i, 3)
        cell = grid[r * 5: r * 5 + 4, c * 4: c * 4 + 3]
        assert cell[0, 0] == 0 and np.allclose(cell.flat[1:], 1.0)
    assert np.isnan(grid[4, :]).all() and np.isnan(grid[:, 3]).all()     # padding lines
    assert np.isnan(grid[5:, 8:]).all()                                 # the empty sixth cell
    raw = viz.tile(maps, ncols=5, pad=0, scale=False)
    assert raw.shape == (4, 15) and raw[1, 14] == 4.0
    assert viz.tile(torch.rand(2, 3, 3), ncols=8).shape == (3, 7)       # fewer maps than columns


def test_feature_grid_draws_one_image_and_refuses_a_batch():
    a = torch.rand(1, 20, 6, 6)
    ax = viz.feature_grid(a, n=16, title="block")
    img = ax.images[0].get_array()
    assert img.shape == (2 * 7 - 1, 8 * 7 - 1)
    assert ax.get_title() == "block"
    w, h = ax.figure.get_size_inches()
    assert w <= 8 and h <= 3
    ax = viz.feature_grid(a[0], channels=[3, 1, 2], ncols=3)
    assert np.allclose(ax.images[0].get_array()[:, :6], viz.normalize(a[0, 3]).numpy())
    with pytest.raises(ValueError, match="pick one"):
        viz.feature_grid(torch.rand(2, 4, 5, 5))


def test_show_images_and_overlay():
    x = torch.rand(5, 3, 16, 16)
    fig = viz.show_images(x, titles=list("abcde"), ncols=3)
    axes = [ax for ax in fig.axes if ax.images]
    assert len(axes) == 5 and axes[4].get_title() == "e"
    assert fig.get_size_inches()[0] <= 8
    fig = viz.show_images(list(x[:2]), titles=["a", "b"], suptitle="two of them")
    assert fig._suptitle.get_text() == "two of them" and len([a for a in fig.axes if a.images]) == 2
    heat = torch.rand(4, 4) * 5
    ax = viz.overlay(x[0], heat, alpha=0.4)
    base, top = ax.images
    assert base.get_array().shape == (16, 16, 3)
    arr = np.asarray(top.get_array())
    assert arr.shape == (16, 16) and arr.min() >= 0 and arr.max() <= 1 + 1e-6
    assert top.get_alpha() == 0.4
