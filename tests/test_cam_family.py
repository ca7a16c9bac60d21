"""XGrad-CAM, LayerCAM, Eigen-CAM and Ablation-CAM compared with pytorch-grad-cam and
torch-cam on shapesnet, shapesvgg and a randomly initialised resnet18, plus the
identities that hold between them."""
import os

os.environ.setdefault("TQDM_DISABLE", "1")      # pytorch-grad-cam's Ablation-CAM shows progress bars

import numpy as np
import pytest
import torch

import xailab
from xailab import hooks
from xailab.attribution import cam as cam_module
from xailab.attribution import scored_cam

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.image import scale_cam_image  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection  # noqa: E402

from test_cam import TARGETS, correlation, x, zoo  # noqa: E402,F401 - the same images, models, measure

MODELS = ["shapesnet", "shapesvgg", "resnet18"]


def assert_same(model, x, method, ref, what):
    """The same map as the reference: ours at the layer's resolution passed through
    pytorch-grad-cam's own scaling and cv2 upsampling, equal to 1e-4; upsampled by us (bilinear, half-pixel
    centres), correlation >= 0.999 wherever the reference is not flat. Returns the non-flat count."""
    low = xailab.explain(model, x, TARGETS[:len(x)], method=method, upsample=False)
    # pytorch-grad-cam scales, resizes with cv2 and scales again (its multi-layer average)
    same_path = torch.as_tensor(scale_cam_image(scale_cam_image(low.numpy(), x.shape[-2:][::-1])))
    ref = torch.as_tensor(ref)
    assert same_path.shape == ref.shape, what
    assert torch.allclose(same_path, ref, atol=1e-4), f"{what}: max diff {float((same_path - ref).abs().max()):.2e}"
    ours = xailab.explain(model, x, TARGETS[:len(x)], method=method)
    flat = ref.flatten(1).std(1) < 1e-9
    assert ((ours.flatten(1).std(1) < 1e-9 * ours.abs().max().clamp_min(1e-30)) == flat).all(), what
    r = correlation(ours[~flat], ref[~flat])
    assert (r >= 0.999).all(), f"{what}: correlation {r.tolist()}"
    return int((~flat).sum())


def reference(cls, model, x, layer=None):
    at = hooks.get_layer(model, layer or model.default_layer)
    with cls(model, [at]) as ref_cam:
        out = ref_cam(x, [ClassifierOutputTarget(int(t)) for t in TARGETS[:len(x)]])
    model.zero_grad(set_to_none=True)             # pytorch-grad-cam fills parameter .grad
    return out


@pytest.mark.parametrize("name", MODELS)
def test_xgradcam_layercam_ablationcam_equal_pytorch_grad_cam(zoo, x, name):
    model = zoo[name]
    compared = 0
    for cls, method in [(pgc.XGradCAM, "xgradcam"), (pgc.LayerCAM, "layercam"),
                        (pgc.AblationCAM, "ablationcam")]:
        compared += assert_same(model, x, method, reference(cls, model, x), f"{method} on {name}")
    assert compared >= 8, "too many flat maps: the comparison says little"
    assert hooks.count_hooks(model) == 0


@pytest.mark.parametrize("name", MODELS)
def test_eigencam_equals_pytorch_grad_cam_up_to_the_sign_of_the_component(zoo, x, name):
    """An SVD's sign is arbitrary; ours is fixed (loadings sum >= 0). pytorch-grad-cam
    keeps whatever numpy returns, so its map equals ours or that of the flipped component."""
    model = zoo[name]
    with hooks.record(model, model.default_layer) as rec, torch.no_grad():
        model(x)
    a = rec.activations[model.default_layer]
    raw = get_2d_projection(a.numpy())                                    # numpy's sign
    loadings_positive = torch.tensor([float((p * a[i].sum(0).numpy()).sum()) >= 0 for i, p in enumerate(raw)])
    sign = torch.where(loadings_positive, 1.0, -1.0).numpy()[:, None, None]
    fixed = scale_cam_image(scale_cam_image(np.maximum(raw * sign, 0), x.shape[-2:][::-1]))
    assert assert_same(model, x, "eigencam", fixed, f"eigencam on {name}") == len(x)
    # the library itself: equal to the fixed map where numpy's sign agreed, flipped elsewhere
    theirs = reference(pgc.EigenCAM, model, x)
    flipped = scale_cam_image(scale_cam_image(np.maximum(-raw * sign, 0), x.shape[-2:][::-1]))
    for i in range(len(x)):
        assert np.allclose(theirs[i], fixed[i], atol=1e-4) or np.allclose(theirs[i], flipped[i], atol=1e-4)
    # no class score is involved
    assert torch.equal(xailab.explain(model, x, TARGETS, method="eigencam"),
                       xailab.explain(model, x, torch.zeros(6, dtype=torch.long), method="eigencam"))


@pytest.mark.parametrize("name", MODELS)
def test_xgradcam_and_layercam_equal_torch_cam_at_layer_resolution(zoo, x, name):
    torchcam = pytest.importorskip("torchcam.methods")
    model = zoo[name]
    for cls, method in [(torchcam.XGradCAM, "xgradcam"), (torchcam.LayerCAM, "layercam")]:
        with cls(model, target_layer=model.default_layer, input_shape=tuple(x.shape[1:])) as extractor:
            scores = model(x)
            ref = extractor(class_idx=TARGETS.tolist(), scores=scores, normalized=False)[0].detach()
        model.zero_grad(set_to_none=True)
        ours = xailab.explain(model, x, TARGETS, method=method, upsample=False)
        # torch-cam adds eps=1e-8 to XGrad-CAM's denominator; the paper has none
        assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max())), f"{method} on {name}"
        assert hooks.count_hooks(model) == 0


def test_on_a_gap_network_xgradcam_is_gradcam_and_layercam_keeps_positive_weights(zoo, x):
    """On shapesnet (conv -> GAP -> linear) dy/dA_k(ij) = w_k / (h w) is one number per
    channel, so XGrad-CAM's weight sum_ij G A / sum_ij A is that number again (= Grad-CAM),
    and LayerCAM keeps the channels with w_k > 0."""
    model = zoo["shapesnet"]
    grad = xailab.explain(model, x, TARGETS, method="gradcam", upsample=False)
    h, w = grad.shape[-2:]
    xgrad = xailab.explain(model, x, TARGETS, method="xgradcam", upsample=False)
    assert torch.allclose(xgrad, grad, rtol=1e-4, atol=1e-7)
    p = cam_module.layer_pass(model, x, TARGETS)
    by_hand = (p.activations * model.fc.weight[TARGETS].clamp_min(0)[:, :, None, None]).sum(1) / (h * w)
    assert torch.allclose(xailab.explain(model, x, TARGETS, method="layercam", upsample=False), by_hand,
                          rtol=1e-4, atol=1e-7)


def test_ablationcam_is_the_same_whether_the_model_is_cut_or_hooked(zoo, x, monkeypatch):
    model = zoo["shapesvgg"]
    cut = xailab.explain(model, x, TARGETS, method="ablationcam", upsample=False)
    for batch_size in (1, 7, 1000):
        assert torch.allclose(xailab.explain(model, x, TARGETS, method="ablationcam", upsample=False,
                                             batch_size=batch_size), cut, rtol=1e-4, atol=1e-5)
    monkeypatch.setattr(scored_cam, "layer_tail", lambda *args: None)   # forces the hooked path
    hooked = xailab.explain(model, x, TARGETS, method="ablationcam", upsample=False, batch_size=16)
    assert torch.allclose(hooked, cut, rtol=1e-4, atol=1e-5)
    assert hooks.count_hooks(model) == 0


def test_layer_tail_cuts_where_it_can_and_refuses_where_it_cannot(zoo, x):
    model = zoo["resnet18"]
    assert scored_cam.layer_tail(model, "net.layer4") is None          # the wrapper checks sizes
    tail = scored_cam.layer_tail(model, "net.layer4", root="net")
    with hooks.record(model, "net.layer4") as rec, torch.no_grad():
        logits = model(x)
    assert torch.allclose(tail(rec.activations["net.layer4"]), logits, atol=1e-5)
    # inside a residual block the skip connection reads the block's input: no cut
    assert scored_cam.layer_tail(model, "net.layer4.0.conv1", root="net") is None


@pytest.mark.parametrize("method", ["xgradcam", "layercam", "eigencam", "ablationcam"])
def test_new_methods_take_any_spatial_layer_and_keep_the_model_as_it_was(zoo, x, method):
    model = zoo["shapesvgg"]
    before = hooks.Snapshot.of(model)
    low = xailab.explain(model, x[:2], TARGETS[:2], method=method, layer="features.block1", upsample=False)
    assert low.shape[-1] > xailab.explain(model, x[:2], TARGETS[:2], method=method, upsample=False).shape[-1]
    assert xailab.explain(model, x[:2], TARGETS[:2], method=method).shape == (2, 64, 64)
    assert before.diff(model) == []
