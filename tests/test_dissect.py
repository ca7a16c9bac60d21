"""Network dissection equals a straightforward per-image reference; the model is left alone."""
import csv
import warnings

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
    assert got.iou.shape == want_iou.shape == (want_thr.numel(), 33)
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
    assert r.iou.shape == (64, 33)
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


# Numbers printed by the dissection code (same fixture: 16 synthetic images, seed 1,
# 48 px; recorded again when the synthetic Broden gained its material category). The
# exact case also equals the per-image reference above. Counts are exact; thresholds
# are rounded to 4 decimals and IoUs to 6.
TRUTH = [805, 465, 1511, 1550, 734, 1803, 94, 134, 137, 1052, 931, 295, 224, 294, 0, 195, 133, 103, 629,
         162, 1152, 3456, 1152, 576, 2880, 0, 53, 77, 918, 950, 0, 1485, 408]
RECORDED = {
    "exact": dict(
        thresholds=[10.2557, 11.7303, 8.8722, 3.5512, 11.7175, 10.7264, 2.7372, 8.9049, 8.6228, 7.213, 10.0342,
                    10.8727, 9.8436, 9.7608, 0.674, 1.3363],
        labels=["square", "heart", "red-c", "rim", "red-c", "red-c", "triangle", "striped", "tip", "white-c",
                "square", "red-c", "cross", "cross", "grey-c", "blue-c"],
        intersection=[203, 214, 194, 157, 210, 163, 186, 193, 210, 145, 169, 210, 194, 199, 94, 142],
        activation=[1448, 1477, 1484, 1340, 1440, 1483, 1459, 1477, 1477, 1518, 1479, 1361, 1478, 1488, 1457, 1415],
        best=[0.075397, 0.097561, 0.063584, 0.030488, 0.063584, 0.045455, 0.049231, 0.126437, 0.086957, 0.024231,
              0.050388, 0.15, 0.047619, 0.047619, 0.062585, 0.04277]),
    "every 5th value": dict(
        thresholds=[9.3022, 11.5895, 8.9852, 3.4542, 11.5542, 10.5622, 2.6769, 8.4769, 8.5292, 7.2662, 10.2144,
                    10.4245, 9.8409, 10.0839, 0.6502, 1.3295],
        labels=["square", "heart", "red-c", "rim", "square", "red-c", "triangle", "striped", "tip", "white-c",
                "square", "square", "cross", "cross", "grey-c", "blue-c"],
        intersection=[275, 225, 182, 180, 229, 177, 210, 238, 238, 130, 140, 234, 194, 178, 102, 153],
        activation=[2117, 1566, 1391, 1527, 1591, 1613, 1717, 1873, 1665, 1390, 1189, 1507, 1478, 1303, 1581, 1514],
        best=[0.076923, 0.095808, 0.064706, 0.034901, 0.065637, 0.044444, 0.048048, 0.12766, 0.090909, 0.023364,
              0.048, 0.154812, 0.047619, 0.048889, 0.068027, 0.04251]),
}


@pytest.mark.parametrize("case", list(RECORDED))
def test_block1_numbers_equal_the_recorded_ones(folder, case):
    model = models.load("shapesnet")
    options = dict(batch_size=7, max_elements=5000) if case == "exact" else dict(max_top=16 * 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = dissect.dissect(model, "features.block1", folder, progress=False, **options)
    want = RECORDED[case]
    assert r.thresholds.tolist() == pytest.approx(want["thresholds"], abs=1e-4)
    assert r.labels() == want["labels"]
    assert r.truth.tolist() == TRUTH
    assert r.intersection.sum(1).tolist() == want["intersection"]
    assert r.activation.sum(1).tolist() == want["activation"]
    assert r.best()[1].tolist() == pytest.approx(want["best"], abs=1e-6)


def test_block3_numbers_and_tally_equal_the_recorded_ones(folder):
    model = models.load("shapesnet")
    r = dissect.dissect(model, "features.block3", folder, cache_elements=0, progress=False)
    assert r.truth.tolist() == TRUTH
    assert (int(r.intersection.sum()), int(r.activation.sum())) == (4146, 49535)
    assert float(r.iou.double().sum()) == pytest.approx(5.122644, abs=1e-5)
    head = r.tally()[["unit", "label", "score"]].head(5)
    assert head.unit.tolist() == [43, 57, 9, 31, 26]
    assert head.label.tolist() == ["heart"] * 5
    assert head.score.tolist() == pytest.approx([0.157534, 0.114094, 0.092199, 0.092105, 0.090278], abs=1e-6)
    s = r.summary()
    assert s.detectors.tolist() == [0, 9, 0, 0, 9, 0] and s.unique.tolist() == [0, 1, 0, 0, 2, 0]
    # one pass over several layers gives each layer the numbers of its own dissection
    # (up to float rounding: the convolutions round differently for another batch size)
    both = dissect.dissect(model, ["features.block1", "features.block3"], folder, batch_size=5, progress=False)
    assert (both["features.block3"].iou - r.iou).abs().max() < 1e-6
    assert (both["features.block3"].thresholds - r.thresholds).abs().max() < 1e-5


def test_batches_follow_the_shared_batch_plan(folder):
    ds = broden.open(folder)
    plan = ds.batch_plan(5)
    assert plan == [list(range(s, min(s + 5, len(ds)))) for s in range(0, len(ds), 5)]
    assert [b.index for b in ds.batches(5, segmentations=False, images=False)] == plan
    with pytest.raises(ValueError, match="batch_size"):
        dissect.dissect(models.load("shapesnet"), "features.block1", folder, batch_size=0, progress=False)
