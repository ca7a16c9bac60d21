"""Network dissection equals a straightforward per-image reference; the model is left alone."""
import csv

import pytest
import torch
import torch.nn.functional as F

from xailab import dissect, hooks, models
from xailab.data import broden


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return broden.make_synthetic(tmp_path_factory.mktemp("broden") / "synthetic", 16, seed=1, size=48)


def reference(model, layer, folder, quantile=0.005):
    """Per image, per concept, the paper's rule written out with no vectorisation tricks."""
    ds = broden.open(folder)
    acts = []
    with torch.no_grad():
        for i in range(len(ds)):
            with hooks.record(model, layer) as rec:
                model(ds.image(i)[None])
            acts.append(rec.activations[layer][0])
    units = acts[0].shape[0]
    everything = torch.stack(acts).transpose(0, 1).reshape(units, -1)
    thresholds = torch.quantile(everything.double(), 1 - quantile, dim=1).float()
    L = ds.n_labels
    inter = torch.zeros(units, L + 1, dtype=torch.float64)
    act = torch.zeros(units, L + 1, dtype=torch.float64)
    truth = torch.zeros(L + 1, dtype=torch.float64)
    for i in range(len(ds)):
        seg = ds.segmentation(i)
        sh, sw = ds.rows[i]["sh"], ds.rows[i]["sw"]
        up = F.interpolate(acts[i][None], size=(sh, sw), mode="bilinear", align_corners=False)[0]
        mask = up > thresholds[:, None, None]                          # [U, sh, sw]
        for n in range(1, L + 1):
            if seg[ds.category_of(n)]:                                 # its category is labelled here
                act[:, n] += mask.sum((1, 2))
            where = torch.zeros(sh, sw, dtype=torch.bool)
            for items in seg.values():
                for x in items:
                    where |= torch.ones_like(where) if (isinstance(x, int) and x == n) else \
                        (x == n if not isinstance(x, int) else torch.zeros_like(where))
            truth[n] += where.sum()
            inter[:, n] += (mask & where).sum((1, 2))
    union = act + truth - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(union))
    return iou[:, 1:], thresholds, torch.stack([a.amax((1, 2)) for a in acts], 1)


@pytest.mark.parametrize("layer", ["features.block1", "features.block3"])
def test_iou_equals_the_per_image_reference(folder, layer):
    model = models.load("shapesnet")
    before = hooks.Snapshot.of(model)
    got = dissect.dissect(model, layer, folder, batch_size=7, progress=False, max_elements=5000)
    want_iou, want_thr, peaks = reference(model, layer, folder)
    assert before.diff(model) == []
    assert torch.allclose(got.thresholds, want_thr, rtol=1e-5, atol=1e-5)
    assert got.iou.shape == want_iou.shape == (want_thr.numel(), 31)
    assert (got.iou - want_iou).abs().max() < 1e-6
    assert float(want_iou.max()) > 0.01            # not a trivially-zero comparison
    # top images: the rows with the highest peak activation, best first
    assert torch.equal(got.top_images[:, 0], peaks.argmax(1))
    # the same numbers with the activation cache off and one big batch
    again = dissect.dissect(model, layer, folder, batch_size=64, progress=False, cache_elements=0)
    assert (again.iou - got.iou).abs().max() < 1e-6


def test_several_layers_any_model_and_results(folder, tmp_path):
    net = models.load_torchvision("resnet18")          # weights=None: random, offline
    before = hooks.Snapshot.of(net)
    # net.layer1.0.relu runs twice per forward pass: like hooks.record, the last output counts
    layers = ["net.layer1", "net.layer1.0.relu"]
    res = dissect.dissect(net, layers, folder, batch_size=10, progress=False)
    assert before.diff(net) == [] and set(res) == set(layers)
    for name in layers:
        want, _, _ = reference(net, name, folder)
        assert (res[name].iou - want).abs().max() < 1e-6, name
    r = res["net.layer1"]
    assert r.iou.shape == (64, 31)
    ds = broden.open(folder)
    assert r.concepts == ds.label_names[1:] and r.thresholds.shape == (64,)
    # the tally: one row per unit, NetDissect's columns, best concept overall first
    t = r.tally()
    assert list(t.columns[:4]) == ["unit", "category", "label", "score"]
    assert {"color-label", "object-iou", "scene-activation", "part-intersect", "texture-truth"} <= set(t.columns)
    assert len(t) == 64 and t.score.is_monotonic_decreasing
    u = int(t.unit[0])
    assert t.score[0] == pytest.approx(float(r.iou[u].max()), abs=1e-6)
    assert t.label[0] == r.concepts[int(r.iou[u].argmax())]
    cat = t.category[0]
    assert t[f"{cat}-label"][0] == t.label[0] and t[f"{cat}-iou"][0] == pytest.approx(t.score[0])
    inter, actv, truth = t[f"{cat}-intersect"][0], t[f"{cat}-activation"][0], t[f"{cat}-truth"][0]
    assert inter / (actv + truth - inter) == pytest.approx(t.score[0], rel=1e-5)
    # detectors and summary count units whose best IoU passes the cutoff
    summary = r.summary(cutoff=0.0)
    assert int(summary.detectors.sum()) == int((r.iou.max(1).values > 0).sum())
    assert (summary.unique <= summary.detectors).all()
    path = r.to_csv(tmp_path / "tally.csv")
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 64 and rows[0]["label"] == t.label[0]


def test_bad_input_and_errors_leave_the_model_alone(folder):
    model = models.load("shapesnet")
    model.train()
    before = hooks.Snapshot.of(model)
    with pytest.raises(hooks.UnknownLayerError, match="block3"):
        dissect.dissect(model, "features.blok3", folder, progress=False)
    with pytest.raises(ValueError, match="spatial map"):
        dissect.dissect(model, "fc", folder, progress=False)
    with pytest.raises(ValueError, match="top fraction"):
        dissect.dissect(model, "features.block1", folder, quantile=0.995, progress=False)
    with pytest.raises(broden.BrodenFormatError, match="not a folder"):
        dissect.dissect(model, "features.block1", folder / "missing", progress=False)
    assert before.diff(model) == [] and model.training


def test_thresholds_from_a_subsample_when_the_top_buffer_is_too_large(folder):
    model = models.load("shapesnet")
    exact = dissect.dissect(model, "features.block1", folder, progress=False)
    with pytest.warns(UserWarning, match="every 5-th activation"):
        approx = dissect.dissect(model, "features.block1", folder, progress=False, max_top=16 * 16)
    # 16 images x 24 x 24 positions; every 5th value kept: still close to the exact quantile
    assert (approx.thresholds - exact.thresholds).abs().max() < 0.2 * exact.thresholds.abs().max()
    assert approx.iou.shape == exact.iou.shape and (approx.iou - exact.iou).abs().max() < 0.05
