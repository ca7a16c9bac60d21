"""CAM family: the CAM identity, cross-checks with Captum and pytorch-grad-cam, shapes,
errors, and the weakly supervised localisation protocol."""
import os

os.environ.setdefault("TQDM_DISABLE", "1")      # pytorch-grad-cam's Score-CAM shows progress bars

import pytest
import torch

import xailab
from xailab import evaluation, hooks, models
from xailab.attribution import cam as cam_module
from xailab.data import shapes

pgc = pytest.importorskip("pytorch_grad_cam")
from captum.attr import GuidedGradCam, LayerGradCam  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

CAM_METHODS = ["cam", "gradcam", "gradcam_pp", "hirescam", "scorecam", "guided_gradcam"]


@pytest.fixture(scope="module")
def x():
    return shapes("test", 6, seed=11).images()


@pytest.fixture(scope="module")
def zoo():
    torch.manual_seed(0)                         # resnet18 is randomly initialised
    return {"shapesnet": models.load("shapesnet"), "shapesvgg": models.load("shapesvgg"),
            "resnet18": models.load_torchvision("resnet18")}


TARGETS = torch.tensor([0, 1, 2, 3, 4, 5])


def correlation(a, b):
    """Pearson correlation per image of two batches of maps [N,H,W]."""
    a = torch.as_tensor(a).reshape(len(a), -1).double()
    b = torch.as_tensor(b).reshape(len(b), -1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-300)


def assert_same_maps(ours, ref, what):
    """Correlation >= 0.999 per image; where the reference map is flat (all zero after
    the ReLU), ours must be flat too."""
    ours, ref = torch.as_tensor(ours).double(), torch.as_tensor(ref).double()
    assert ours.shape == ref.shape, what
    flat = ref.flatten(1).std(1) < 1e-9
    assert torch.equal(ours.flatten(1).std(1) < 1e-9 * ours.abs().max().clamp_min(1e-30), flat), what
    r = correlation(ours[~flat], ref[~flat])
    assert (r >= 0.999).all(), f"{what}: correlation {r.tolist()}"
    return int((~flat).sum())


def test_gradcam_equals_cam_up_to_a_positive_factor_on_a_gap_network(zoo, x):
    model = zoo["shapesnet"]
    for t in (None, TARGETS):
        raw = xailab.explain(model, x, t, method="cam", upsample=False)
        g = xailab.explain(model, x, t, method="gradcam", upsample=False)
        h, w = raw.shape[-2:]
        # dy/dA_k(ij) = w_k / (h w) at every position, so Grad-CAM = ReLU(CAM) / (h w)
        assert torch.allclose(g, raw.clamp_min(0) / (h * w), rtol=1e-5, atol=1e-7)
        ratio = g.sum((1, 2)) / raw.clamp_min(0).sum((1, 2))
        assert (ratio > 0).all() and torch.allclose(ratio, torch.full_like(ratio, 1 / (h * w)))
        # the upsampled maps too, and CAM with relu=True is exactly the positive part
        up = xailab.explain(model, x, t, method="cam", relu=True)
        assert torch.allclose(xailab.explain(model, x, t, method="gradcam"), up / (h * w), atol=1e-7)
    # CAM by hand: the class's fc row applied to the last feature maps
    with torch.no_grad():
        a = model.features(model.normalize(x))
    by_hand = torch.einsum("nc,nchw->nhw", model.fc.weight[TARGETS], a)
    assert torch.allclose(xailab.explain(model, x, TARGETS, method="cam", upsample=False), by_hand, atol=1e-5)


@pytest.mark.parametrize("name", ["shapesnet", "shapesvgg", "resnet18"])
def test_gradcam_equals_captum_layer_gradcam_at_layer_resolution(zoo, x, name):
    model = zoo[name]
    layer = hooks.get_layer(model, model.default_layer)
    ref = LayerGradCam(model, layer).attribute(x, target=TARGETS, relu_attributions=True)[:, 0]
    ours = xailab.explain(model, x, TARGETS, method="gradcam", upsample=False)
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))
    assert hooks.count_hooks(model) == 0


@pytest.mark.parametrize("name", ["shapesnet", "shapesvgg", "resnet18"])
def test_cam_methods_match_pytorch_grad_cam(zoo, x, name):
    model = zoo[name]
    targets = [ClassifierOutputTarget(int(t)) for t in TARGETS]
    cases = [(pgc.GradCAM, "gradcam", {}), (pgc.GradCAMPlusPlus, "gradcam_pp", dict(eps=1e-6)),
             (pgc.HiResCAM, "hirescam", {})]
    # Score-CAM costs one pass per channel: at resnet18's layer4 (512 channels) that is too
    # slow for a test, so there it runs at layer1 (64 channels, 16x16)
    score_layer = "net.layer1" if name == "resnet18" else model.default_layer
    cases.append((pgc.ScoreCAM, "scorecam", dict(align_corners=True, layer=score_layer)))
    compared = 0
    for cls, method, kw in cases:
        n = len(x) if method != "scorecam" else 2 if name == "resnet18" else 3   # Score-CAM is slow
        at = hooks.get_layer(model, kw.get("layer", model.default_layer))
        with cls(model, [at]) as ref_cam:
            ref = ref_cam(x[:n], targets[:n])
        ours = xailab.explain(model, x[:n], TARGETS[:n], method=method, **kw)
        compared += assert_same_maps(ours, ref, f"{method} on {name}")
    assert compared >= 2 * len(cases), "too many flat maps: the comparison says little"
    assert hooks.count_hooks(model) == 0
    model.zero_grad(set_to_none=True)             # pytorch-grad-cam fills parameter .grad


def test_gradcam_pp_default_eps_follows_the_paper(zoo, x):
    """eps=0 (the authors' formula) and pytorch-grad-cam's eps=1e-6 agree wherever
    gradients are large compared with 1e-3 (shapesvgg), not on shapesnet where every
    gradient is w / 256."""
    a = xailab.explain(zoo["shapesvgg"], x, TARGETS, method="gradcam_pp", upsample=False)
    b = xailab.explain(zoo["shapesvgg"], x, TARGETS, method="gradcam_pp", upsample=False, eps=1e-6)
    assert (correlation(a, b) > 0.999).all()
    # by hand on a tiny case: one channel, gradients 1 and 2, activation sum 3
    act = torch.tensor([[[[1.0, 2.0]]]])
    grad = torch.tensor([[[[1.0, 2.0]]]])
    alpha = torch.tensor([1 / (2 + 3), 4 / (8 + 3 * 8)])
    assert torch.allclose(cam_module.gradcam_pp_weights(act, grad), (alpha * grad[0, 0, 0]).sum().view(1, 1))


def test_guided_gradcam_equals_captum_with_bilinear_upsampling(zoo, x):
    for name in ("shapesnet", "shapesvgg"):
        model = zoo[name]
        layer = hooks.get_layer(model, model.default_layer)
        ref = GuidedGradCam(model, layer).attribute(x, target=TARGETS, interpolate_mode="bilinear")
        ours = xailab.explain(model, x, TARGETS, method="guided_gradcam", reduce=None)
        assert torch.allclose(ours, ref, atol=1e-6 * float(ref.abs().max()))
        heat = xailab.explain(model, x, TARGETS, method="guided_gradcam")
        assert torch.allclose(heat, ref.abs().amax(1))


def test_scorecam_follows_the_papers_algorithm_and_is_independent_of_batch_size(zoo, x):
    """Algorithm 1 of the paper written out, baseline included: S_k = f^c(x * H_k) - f^c(x_b)
    with a black baseline image, weights softmax_k(S_k). The baseline is one number per
    image, so it cancels in the softmax: the default needs no baseline pass."""
    model = zoo["shapesvgg"]
    xs, t = x[:2], TARGETS[:2]
    with hooks.record(model, "features.block3") as rec, torch.no_grad():
        model(xs)
    a = rec.activations["features.block3"]
    up = torch.nn.functional.interpolate(a, size=xs.shape[-2:], mode="bilinear", align_corners=False)
    lo, hi = up.amin((2, 3), keepdim=True), up.amax((2, 3), keepdim=True)
    masks = (up - lo) / (hi - lo).clamp_min(1e-12)
    with torch.no_grad():
        masked = torch.stack([model(xs[n] * masks[n][:, None])[:, t[n]] for n in range(2)])
        baseline = model(torch.zeros_like(xs)).gather(1, t[:, None])
    scores = masked - baseline
    assert not torch.allclose(scores, masked)                # the baseline score is not zero here
    want = (torch.softmax(scores, 1)[:, :, None, None] * a).sum(1).clamp_min(0)
    for bs in (7, 64, 1000):
        got = xailab.explain(model, xs, t, method="scorecam", upsample=False, batch_size=bs)
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    explicit = xailab.explain(model, xs, t, method="scorecam", upsample=False, output="logit")
    assert torch.equal(explicit, xailab.explain(model, xs, t, method="scorecam", upsample=False))


def released_scorecam(model, layer, x, target):
    """Score-CAM as the authors' released code computes it, one image and one channel at a
    time: skip constant channels, scale the upsampled channel to [0, 1], mask the image,
    weight the upsampled channel by the class probability of the masked image, sum, ReLU."""
    maps = []
    for n in range(len(x)):
        with hooks.record(model, layer) as rec, torch.no_grad():
            model(x[n:n + 1])
        a = rec.activations[layer]
        total = torch.zeros(1, 1, *x.shape[-2:])
        for k in range(a.shape[1]):
            up = torch.nn.functional.interpolate(a[:, k:k + 1], size=x.shape[-2:], mode="bilinear",
                                                 align_corners=False)
            if up.max() == up.min():
                continue
            mask = (up - up.min()) / (up.max() - up.min())
            with torch.no_grad():
                p = torch.softmax(model(x[n:n + 1] * mask), 1)[0, target[n]]
            total += p * up
        maps.append(total.clamp_min(0)[0, 0])
    return torch.stack(maps)


class _DeadChannel(torch.nn.Module):
    """A GAP network whose channel 2 is 1 everywhere after the ReLU (a constant channel)."""
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.relu = torch.nn.ReLU()
        self.fc = torch.nn.Linear(4, 3)
        with torch.no_grad():
            self.conv.weight[2] = 0
            self.conv.bias[2] = 1.0

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("name", ["shapesnet", "shapesvgg", "dead channel"])
def test_scorecam_probability_weighting_equals_the_authors_released_code(zoo, x, name):
    model = _DeadChannel().eval() if name == "dead channel" else zoo[name]
    layer = "relu" if name == "dead channel" else model.default_layer
    xs, t = x[:2], TARGETS[:2] % 3
    want = released_scorecam(model, layer, xs, t)
    got = xailab.explain(model, xs, t, method="scorecam", layer=layer, output="probability", batch_size=5)
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    with pytest.raises(ValueError, match="'logit'.+'probability'"):
        xailab.explain(model, xs, t, method="scorecam", layer=layer, output="probabilities")
    if name == "dead channel":                 # skipped, its constant 1 would lift every map
        assert bool((model.relu(model.conv(xs))[:, 2] == 1).all())
        return
    paper = xailab.explain(model, xs, t, method="scorecam", layer=layer)   # a different weighting
    assert not torch.allclose(paper / paper.amax((1, 2), keepdim=True).clamp_min(1e-12),
                              got / got.amax((1, 2), keepdim=True).clamp_min(1e-12), atol=1e-3)


def test_cam_refuses_heads_without_global_average_pooling(zoo, x):
    for model in (zoo["shapesvgg"], models.load_torchvision("vgg11")):
        before = hooks.Snapshot.of(model)
        with pytest.raises(cam_module.CAMNotApplicableError) as err:
            xailab.explain(model, x[:2], method="cam")
        msg = str(err.value)
        assert "gradcam" in msg and "average" in msg and "linear" in msg
        assert before.diff(model) == []
    with pytest.raises(ValueError, match="gradcam"):    # also a ValueError
        xailab.explain(zoo["shapesnet"], x[:2], method="cam", layer="features.block2")
    # a torchvision GAP network is fine
    out = xailab.explain(zoo["resnet18"], x[:2], TARGETS[:2], method="cam", upsample=False)
    assert out.shape == (2, 2, 2)


@pytest.mark.parametrize("method", ["cam", "gradcam", "gradcam_pp", "hirescam", "scorecam"])
def test_layer_and_upsample_options_and_batches(zoo, x, method):
    model = zoo["shapesnet"]
    kw = dict(batch_size=256) if method == "scorecam" else {}
    n = 2 if method == "scorecam" else 6            # Score-CAM: 64 forward passes per image
    assert xailab.explain(model, x[:n], method=method, **kw).shape == (n, 64, 64)
    assert xailab.explain(model, x[:n], method=method, upsample=False, **kw).shape == (n, 16, 16)
    assert xailab.explain(model, x[:1], method=method, upsample=False, **kw).shape == (1, 16, 16)
    if method != "cam":
        low = xailab.explain(model, x[:2], TARGETS[:2], method=method, layer="features.block2.relu2",
                             upsample=False, **kw)
        assert low.shape == (2, 32, 32)         # before block2's max-pool
        assert xailab.explain(model, x[:2], TARGETS[:2], method=method, layer=model.features.block2,
                              upsample=False, **kw).shape == (2, 16, 16)   # a module works too
        # a batch gives the same maps as the images one at a time
        one = torch.cat([xailab.explain(model, x[i:i + 1], TARGETS[i:i + 1], method=method, **kw)
                         for i in range(min(n, 3))])
        many = xailab.explain(model, x[:min(n, 3)], TARGETS[:min(n, 3)], method=method, **kw)
        assert torch.allclose(one, many, rtol=1e-4, atol=1e-6 * float(many.abs().max()))
    assert hooks.count_hooks(model) == 0


def test_default_layer_is_found_on_torchvision_models(zoo, x):
    model = zoo["resnet18"]
    assert model.default_layer == "net.layer4"
    assert xailab.explain(model, x[:2], TARGETS[:2], method="gradcam", upsample=False).shape == (2, 2, 2)
    assert xailab.explain(model, x[:2], TARGETS[:2], method="gradcam", layer="net.layer3",
                          upsample=False).shape == (2, 4, 4)


def test_bad_layers_give_helpful_errors(zoo, x):
    model = zoo["shapesnet"]
    before = hooks.Snapshot.of(model)
    with pytest.raises(hooks.UnknownLayerError) as err:
        xailab.explain(model, x[:1], method="gradcam", layer="features.blok3")
    assert "features.block3" in str(err.value)
    with pytest.raises(ValueError, match="spatial"):
        xailab.explain(model, x[:1], method="gradcam", layer="fc")
    with pytest.raises(ValueError, match="spatial"):
        xailab.explain(model, x[:1], method="hirescam", layer="avgpool")
    assert before.diff(model) == []


def test_direct_calls_leave_the_model_as_found(x):
    model = models.load("shapesnet")
    model.train()
    model.fc.weight.requires_grad_(False)
    before = hooks.Snapshot.of(model)
    for method in ("cam", "gradcam", "gradcam_pp", "hirescam", "guided_gradcam"):
        getattr(cam_module, method)(model, x[:2])
        assert before.diff(model) == [], method          # BatchNorm statistics untouched too
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="out of range"):
        cam_module.gradcam(model, x[:2], target=6)
    assert before.diff(model) == []
    # eval mode inside: the same maps as through explain
    assert torch.allclose(cam_module.gradcam(model, x[:2], TARGETS[:2]),
                          xailab.explain(model, x[:2], TARGETS[:2], method="gradcam"))


# ---------------------------------------------------------------- localisation

def test_box_and_iou_on_hand_made_maps():
    h = torch.zeros(10, 12)
    h[1:4, 2:6] = 1.0          # largest region: rows 1-3, cols 2-5 -> box (2, 1, 6, 4)
    h[7:9, 9:11] = 0.9         # smaller region
    h[5, 0] = 0.1              # below 20% of the maximum: ignored
    assert evaluation.box_from_map(h) == (2, 1, 6, 4)
    h[4, 6] = 0.5              # touches the first region diagonally: 8-connected, joins it
    assert evaluation.box_from_map(h) == (2, 1, 7, 5)
    assert evaluation.box_from_map(h, threshold=0.95) == (2, 1, 6, 4)
    assert evaluation.box_from_map(torch.zeros(5, 5)) is None
    assert evaluation.box_iou((0, 0, 4, 4), (0, 0, 4, 4)) == 1.0
    assert evaluation.box_iou((0, 0, 4, 4), (2, 0, 6, 4)) == pytest.approx(8 / 24)
    assert evaluation.box_iou((0, 0, 2, 2), (3, 3, 5, 5)) == 0.0


def test_localisation_accuracy_with_a_known_answer():
    model = models.load("shapesnet")
    images = torch.zeros(4, 3, 16, 16)
    boxes = [(2, 2, 8, 8), (2, 2, 8, 8), (0, 0, 16, 16), (4, 4, 12, 12)]
    labels = [0, 1, 2, 3]

    def fake_method(model, x, target):
        maps = torch.zeros(len(x), 16, 16)
        maps[0, 2:8, 2:8] = 1        # exactly the box: IoU 1
        maps[1, 2:8, 5:11] = 1       # shifted by 3 of 6 columns: IoU 18/54 = 1/3, a miss
        maps[2] = 0                  # nothing: a miss
        maps[3, 4:12, 4:11] = 1      # 7 of 8 columns: IoU 56/64, a hit
        maps[3, 0, 0] = 1            # a one-pixel blob elsewhere does not count
        return maps

    out = evaluation.localisation(model, images, fake_method, boxes=boxes, labels=labels)
    assert out["hits"].tolist() == [True, False, False, True]
    assert out["ious"].tolist() == pytest.approx([1.0, 1 / 3, 0.0, 56 / 64])
    assert out["boxes"][2] is None and out["accuracy"] == 0.5
    assert evaluation.localisation_accuracy(model, images, fake_method, boxes=boxes, labels=labels,
                                            iou=0.3) == 0.75
    with pytest.raises(ValueError, match="boxes="):
        evaluation.localisation_accuracy(model, images, fake_method)


def test_localisation_on_the_shapes_test_split():
    model = models.load("shapesnet")
    ds = shapes("test", 48, seed=5)
    before = hooks.Snapshot.of(model)
    acc = evaluation.localisation_accuracy(model, ds, "gradcam", batch_size=20)
    assert 0.5 <= acc <= 1.0            # a trained GAP network localises most shapes
    # a map that ignores the image (a centred square) localises much worse
    centre = evaluation.localisation_accuracy(
        model, ds, lambda m, x, t: torch.nn.functional.pad(torch.ones(len(x), 32, 32), (16, 16, 16, 16)))
    assert centre < acc
    # the tensor form gives the same number as the dataset form
    gts = [ds.ground_truth(i) for i in range(len(ds))]
    same = evaluation.localisation_accuracy(model, ds.images(), "gradcam", boxes=[g["bbox"] for g in gts],
                                            labels=[g["label"] for g in gts])
    assert same == acc
    top1 = evaluation.localisation_accuracy(model, ds, "gradcam", target="predicted")
    assert top1 <= acc                  # a hit for the predicted class also needs it to be right
    assert before.diff(model) == []
