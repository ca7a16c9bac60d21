"""Bad input gets a clear error from every method and metric, the same for all."""
import functools

import pytest
import torch

import xailab
from xailab import evaluation, hooks


@pytest.mark.parametrize("model", ["shapesnet", "shapesvit"])
@pytest.mark.parametrize("method", xailab.methods())
def test_every_method_refuses_nan_or_inf_images_and_empty_batches(request, model, method):
    shapesnet = request.getfixturevalue("shapesnet") if model == "shapesnet" else _vit()
    x = xailab.data.shapes("test", 2).images()
    before = hooks.Snapshot.of(shapesnet)
    for bad in (float("nan"), float("inf")):
        y = x.clone()
        y[1, 0, 5, 5] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            xailab.explain(shapesnet, y, method=method)
    with pytest.raises(ValueError, match="no images"):
        xailab.explain(shapesnet, x[:0], method=method)
    assert before.diff(shapesnet) == []


@functools.cache
def _vit():
    return xailab.models.load("shapesvit")


def test_scores_refuse_nan_maps():
    maps = torch.rand(2, 8, 8)
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, 2:5, 2:5] = True
    assert evaluation.relevance_mass(maps, masks).shape == (2,)
    maps[0, 1, 1] = float("nan")
    for score in (evaluation.relevance_mass, evaluation.relevance_rank, evaluation.pointing_game):
        with pytest.raises(ValueError, match="NaN or inf"):
            score(maps, masks)
