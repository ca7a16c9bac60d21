"""Attention-based explanations of the vision transformer, checked against the
module's own attention weights and pytorch-grad-cam; every registered method on the
ViT either works or says why it does not; nothing leaks."""
import pytest
import torch

import xailab
from xailab import hooks, models
from xailab.attribution import attention as at
from xailab.attribution import get_method

BLOCKS = [f"encoder.layers.encoder_layer_{i}" for i in range(4)]
TARGETS = [0, 3, 5, 1]


@pytest.fixture(scope="module")
def vit():
    return models.load("shapesvit")


@pytest.fixture(scope="module")
def x():
    return xailab.data.shapes("test", 4, seed=11).images()


def reference_attentions(model, x):
    """Each block's weights from ``MultiheadAttention`` itself (need_weights=True, per head)."""
    with hooks.record(model, [f"{b}.ln_1" for b in BLOCKS]) as rec, torch.no_grad():
        model(x)
    out = []
    for b in BLOCKS:
        z = rec.activations[f"{b}.ln_1"]
        mha = hooks.get_layer(model, f"{b}.self_attention")
        with torch.no_grad():
            out.append(mha(z, z, z, need_weights=True, average_attn_weights=False)[1])
    return out


def test_recomputed_attention_equals_the_modules_weights_and_keeps_the_output(vit, x):
    with torch.no_grad():
        plain = vit(x)
        with at.attention_weights(vit) as store:
            hooked = vit(x)
    assert hooks.count_hooks(vit) == 0
    torch.testing.assert_close(hooked, plain, atol=1e-5, rtol=1e-5)
    for a, ref in zip([store[b] for b in BLOCKS], reference_attentions(vit, x)):
        assert a.shape == (4, 4, 65, 65)
        torch.testing.assert_close(a, ref, atol=1e-6, rtol=1e-5)


def test_attention_is_the_class_tokens_row_per_head_or_averaged(vit, x):
    ref = reference_attentions(vit, x)
    for layer, i in [(None, 3), (0, 0), (BLOCKS[1], 1), (f"{BLOCKS[2]}.ln_1", 2)]:
        mean = xailab.explain(vit, x, method="attention", layer=layer, upsample=False)
        torch.testing.assert_close(mean, ref[i].mean(1)[:, 0, 1:].reshape(4, 8, 8), atol=1e-6, rtol=1e-5)
    head = xailab.explain(vit, x, method="attention", layer=-1, head=2, upsample=False)
    torch.testing.assert_close(head, ref[3][:, 2, 0, 1:].reshape(4, 8, 8), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="head"):
        xailab.explain(vit, x, method="attention", head=4)
    with pytest.raises(ValueError, match="not an encoder block"):
        xailab.explain(vit, x, method="attention", layer="conv_proj")


def test_rollout_multiplies_half_attention_half_identity_through_the_blocks(vit, x):
    ref = reference_attentions(vit, x)
    eye = torch.eye(65)
    r = eye
    for a in ref:                                  # Abnar & Zuidema's recipe, written out
        a = 0.5 * a.mean(1) + 0.5 * eye
        r = (a / a.sum(-1, keepdim=True)) @ r
    ours = xailab.explain(vit, x, method="attention_rollout", upsample=False)
    torch.testing.assert_close(ours, r[:, 0, 1:].reshape(4, 8, 8), atol=1e-6, rtol=1e-4)
    assert ours.sum((1, 2)).max() < 1 and (ours > 0).all()     # the class token keeps some
    maxed = xailab.explain(vit, x, method="attention_rollout", head_fusion="max", upsample=False)
    assert not torch.allclose(maxed, ours)
    with pytest.raises(ValueError, match="head_fusion"):
        xailab.explain(vit, x, method="attention_rollout", head_fusion="median")


def test_gradient_weighted_attention_follows_the_class(vit, x):
    ref = reference_attentions(vit, x)
    t = torch.tensor(TARGETS)
    # the gradient of the class score with respect to each block's weights, by a
    # second route: perturb one block's weights through a hook on its softmax input
    grads = []
    for i, b in enumerate(BLOCKS):
        with at.attention_weights(vit) as store, torch.enable_grad():
            logits = vit(x.clone().requires_grad_(True))
            grads.append(torch.autograd.grad(logits.gather(1, t[:, None]).sum(), store[b])[0])
    r = torch.eye(65).expand(4, 65, 65)
    for a, g in zip(ref, grads):
        r = r + (g * a).clamp_min(0).mean(1) @ r
    ours = xailab.explain(vit, x, t, method="attention_gradient", upsample=False)
    torch.testing.assert_close(ours, r[:, 0, 1:].reshape(4, 8, 8), atol=1e-6, rtol=1e-4)
    other = xailab.explain(vit, x, (t + 1) % 6, method="attention_gradient", upsample=False)
    assert not torch.allclose(ours, other)


def test_token_gradcam_equals_pytorch_grad_cam_with_the_vit_reshape(vit, x):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    def reshape_transform(tokens):                 # pytorch-grad-cam's ViT tutorial
        tokens = tokens[:, 1:, :]
        return tokens.reshape(tokens.shape[0], 8, 8, tokens.shape[2]).permute(0, 3, 1, 2)
    for layer in (vit.default_layer, f"{BLOCKS[1]}.ln_1"):
        with pgc.GradCAM(vit, [hooks.get_layer(vit, layer)], reshape_transform=reshape_transform) as cam:
            ref = cam(x, [ClassifierOutputTarget(t) for t in TARGETS])
        vit.zero_grad(set_to_none=True)
        low = xailab.explain(vit, x, TARGETS, method="token_gradcam", layer=layer, upsample=False)
        ours = scale_cam_image(scale_cam_image(low.numpy(), (64, 64)))
        assert abs(ours - ref).max() < 1e-4 and ref.std() > 0.05
    assert vit.default_layer == f"{BLOCKS[-1]}.ln_1"
    by_block = xailab.explain(vit, x, TARGETS, method="token_gradcam", layer=BLOCKS[1])
    torch.testing.assert_close(by_block, xailab.explain(vit, x, TARGETS, method="token_gradcam",
                                                        layer=f"{BLOCKS[1]}.ln_1"))


@pytest.mark.parametrize("name", xailab.methods())
def test_every_method_runs_on_the_vit_or_says_why_not(vit, name):
    m = get_method(name)
    x = xailab.data.shapes("test", 2, seed=5).images()
    before = hooks.Snapshot.of(vit)
    options = dict(m.cheap)
    if "seed" in m.options:
        options["seed"] = 0
    if "batch_size" in m.options:
        options["batch_size"] = 4
    if m.family == "cam":                           # CAM needs a spatial map; a ViT has tokens
        with pytest.raises(ValueError, match="spatial feature map"):
            xailab.explain(vit, x, method=name, **options)
    elif m.family == "rule":                        # rules are defined for convolutional networks
        with pytest.raises(ValueError, match="convolutional networks only"):
            xailab.explain(vit, x, method=name, **options)
    else:
        out = xailab.explain(vit, x, [1, 4], method=name, **options)
        assert out.shape == (2, 64, 64) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert before.diff(vit) == []


@pytest.mark.parametrize("name", xailab.methods("attention"))
def test_attention_methods_refuse_a_cnn_clearly(shapesnet, name):
    x = xailab.data.shapes("test", 1).images()
    with pytest.raises(at.NotATransformerError, match="vision transformer"):
        xailab.explain(shapesnet, x, method=name)
    assert hooks.count_hooks(shapesnet) == 0


def test_torchvision_vit_runs_at_its_native_size_and_explains_its_tokens():
    torch.manual_seed(0)
    m = models.load_torchvision("vit_b_16", num_classes=6)
    assert m.default_layer == "net.encoder.layers.encoder_layer_11.ln_1"
    with pytest.raises(ValueError, match="224x224"):
        m(torch.rand(1, 3, 64, 64))
    x = torch.rand(1, 3, 224, 224)
    for name in ("attention_rollout", "token_gradcam"):
        assert xailab.explain(m, x, method=name).shape == (1, 224, 224)
    assert hooks.count_hooks(m) == 0
