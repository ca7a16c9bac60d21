"""Permutation importance of patches: equal to a plain per-patch, per-image loop, and it
finds the watermark that the shortcut model uses."""
import pytest
import torch

from xailab import data, models
from xailab.importance import permutation_importance


def _images(n, shortcut=False, split="test"):
    ds = data.shapes(split, n, seed=0, shortcut=shortcut)
    return torch.stack([ds[i][0] for i in range(n)]), torch.tensor([ds[i][1] for i in range(n)])


def _reference(model, x, y, patch, n_repeats, seed):
    """One image at a time: image i gets cell (r, c) of image order[i]."""
    g = torch.Generator().manual_seed(seed)
    orders = [torch.randperm(len(x), generator=g) for _ in range(n_repeats)]
    with torch.no_grad():
        base = sum(int(model(x[i:i + 1]).argmax(1) == y[i]) for i in range(len(x))) / len(x)
        out = torch.zeros(x.shape[-2] // patch, x.shape[-1] // patch)
        for r in range(out.shape[0]):
            for c in range(out.shape[1]):
                for order in orders:
                    hits = 0
                    for i in range(len(x)):
                        img = x[i].clone()
                        rows, cols = slice(r * patch, (r + 1) * patch), slice(c * patch, (c + 1) * patch)
                        img[:, rows, cols] = x[order[i]][:, rows, cols]
                        hits += int(model(img[None]).argmax(1) == y[i])
                    out[r, c] += (base - hits / len(x)) / n_repeats
    return out


def test_equals_a_per_image_loop():
    model = models.load("shapesnet")
    x, y = _images(12)
    ours = permutation_importance(model, x, y, patch=16, n_repeats=2, seed=3, batch_size=5)
    assert ours.shape == (4, 4)
    assert torch.allclose(ours, _reference(model, x, y, 16, 2, 3), atol=1e-6)
    assert ours.abs().sum() > 0


def test_the_shortcut_models_most_important_border_patch_is_the_watermark_corner():
    # on the training distribution (val split) the watermark comes with the shortcut class,
    # so shuffling the corner breaks what the model relies on
    model = models.load("shapesnet-shortcut")
    x, y = _images(96, shortcut=True, split="val")
    importance = permutation_importance(model, x, y, patch=16, n_repeats=2)
    clean = permutation_importance(models.load("shapesnet"), x, y, patch=16, n_repeats=2)
    border = importance.clone()
    border[1:3, 1:3] = -1                                            # the centre holds the objects
    assert border.argmax() == importance.numel() - 1                 # bottom-right cell
    assert importance[-1, -1] > clean[-1, -1] + 0.1


def test_leaves_the_model_as_it_was():
    model = models.load("shapesnet")
    model.train()
    try:
        permutation_importance(model, *_images(4), patch=32, n_repeats=1)
        assert model.training
    finally:
        model.eval()


@pytest.mark.parametrize("kwargs, words", [(dict(patch=7), "must divide"), (dict(n_repeats=0), "n_repeats"),
                                           (dict(y=torch.zeros(3, dtype=torch.long)), "one label per image")])
def test_bad_input_says_what_to_do(kwargs, words):
    x, y = _images(4)
    kwargs.setdefault("y", y)
    with pytest.raises(ValueError, match=words):
        permutation_importance(models.load("shapesnet"), x, **kwargs)
