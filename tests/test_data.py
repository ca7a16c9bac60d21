import hashlib

import numpy as np
import pytest
import torch

from xailab.data import CLASSES, SHORTCUT_CLASS, shapes
from xailab.data.shapes import TEST_MARK_RATE


def digest(ds):
    return hashlib.sha256(ds._images.numpy().tobytes()).hexdigest()


def test_same_seed_gives_byte_identical_images_golden():
    # golden hashes: a change to the generator must be deliberate (and retrain the models)
    assert digest(shapes("train", 300, seed=0)) == "b2ce25347787c43d2e58ba15832bafdc1a38e9b38fb76c6ab15ea1cb8b299210"
    assert digest(shapes("test", 300, seed=0, shortcut=True)) == "1db614df5c44fef6288a2b88cd8534640cdab588c070b6c74e7c4b0dd1f14350"


def test_every_class_is_a_compact_object_not_its_complement():
    # a sign error once drew the star's complement: masks must cover a small part of the image
    ds = shapes("test", 300, seed=2)
    cover = torch.stack([ds.ground_truth(i)["mask"].float().mean() for i in range(len(ds))])
    for c, name in enumerate(CLASSES):
        mean = float(cover[ds.labels == c].mean())
        assert 0.03 < mean < 0.35, f"{name}: mask covers {mean:.0%} of the image on average"


def test_seeds_and_splits_differ_and_prefixes_agree():
    a = shapes("train", 600, seed=0)
    assert torch.equal(shapes("train", 300, seed=0).images(), a.images(slice(0, 300)))
    assert not torch.equal(shapes("train", 300, seed=1).images(), a.images(slice(0, 300)))
    assert not torch.equal(shapes("val", 300, seed=0).images(), a.images(slice(0, 300)))


def test_item_contract():
    ds = shapes("test", 50, seed=3)
    x, y = ds[7]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1 and isinstance(y, int) and 0 <= y < len(CLASSES)
    assert ds.classes == CLASSES and len(CLASSES) >= 6 and len(ds) == 50
    assert shapes("test", 4, size=96)[0][0].shape == (3, 96, 96)


def test_ground_truth_mask_box_and_pixels_agree():
    ds = shapes("test", 200, seed=5)
    areas = []
    for i in range(len(ds)):
        gt = ds.ground_truth(i)
        m, (x0, y0, x1, y1) = gt["mask"], gt["bbox"]
        assert m.dtype == torch.bool and m.shape == (64, 64) and gt["label"] == ds[i][1]
        assert m[y0:y1, x0:x1].sum() == m.sum() > 0           # the box holds the whole object
        assert m[y0, x0:x1].any() and m[y1 - 1, x0:x1].any()  # and is tight
        assert m[y0:y1, x0].any() and m[y0:y1, x1 - 1].any()
        areas.append(m.float().mean().item())
        x = ds[i][0]
        inside = x[:, m]
        # the object is drawn in one colour (with faint shading): small spread inside the mask
        assert inside.std(1).max() < 0.1
    assert 0.03 < np.mean(areas) < 0.35


def test_classes_are_balanced_and_all_present():
    counts = torch.bincount(shapes("train", 3000).labels, minlength=len(CLASSES))
    assert counts.min() > 3000 / len(CLASSES) * 0.8


def test_shortcut_watermark_follows_the_class_in_training_only():
    k = CLASSES.index(SHORTCUT_CLASS)
    train = shapes("train", 3000, shortcut=True)
    is_k = train.labels == k
    assert train.watermarked[~is_k].sum() == 0
    assert train.watermarked[is_k].float().mean() > 0.9
    test = shapes("test", 3000, shortcut=True)
    rate_k = test.watermarked[test.labels == k].float().mean()
    rate_other = test.watermarked[test.labels != k].float().mean()
    assert abs(rate_k - TEST_MARK_RATE) < 0.08 and abs(rate_other - TEST_MARK_RATE) < 0.05
    assert shapes("test", 100).watermarked.sum() == 0


def test_watermark_ground_truth_and_overrides():
    test = shapes("test", 100, shortcut=True)
    i = int(torch.nonzero(test.watermarked)[0])
    wm = test.ground_truth(i)["watermark"]
    assert wm.sum() > 0 and not (wm & test.ground_truth(i)["mask"]).any()
    j = int(torch.nonzero(~test.watermarked)[0])
    assert test.ground_truth(j)["watermark"].sum() == 0
    marked_all = shapes("test", 100, shortcut=True, watermark="all")
    none = shapes("test", 100, shortcut=True, watermark="none")
    assert bool(marked_all.watermarked.all()) and not none.watermarked.any()
    # outside the corner, the three versions are the same images
    outside = ~wm
    for ds in (marked_all, none):
        assert torch.equal(ds.images(slice(0, 100))[:, :, outside], test.images(slice(0, 100))[:, :, outside])
    assert torch.equal(none.images(), shapes("test", 100, shortcut=True, watermark="none").images())


@pytest.mark.parametrize("bad", [dict(split="dev"), dict(n=0), dict(size=8), dict(watermark="some")])
def test_bad_arguments_say_what_is_allowed(bad):
    kwargs = dict(split="test", n=4) | bad
    with pytest.raises(ValueError, match="must"):
        shapes(**kwargs)
