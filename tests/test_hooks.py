"""Hooks: capture is correct, errors are helpful, and no call leaks anything."""
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import xailab
from xailab import hooks, models

ARCHS = ["resnet18", "vgg11", "mobilenet_v3_small", "densenet121"]


def test_unknown_layer_lists_close_matches():
    m = models.build("shapesnet")
    with pytest.raises(hooks.UnknownLayerError) as err:
        hooks.get_layer(m, "features.blok3")
    assert "features.block3" in str(err.value) and "list_layers" in str(err.value)
    with pytest.raises(KeyError):            # also a KeyError, for code that catches those
        hooks.get_layer(m, "nothing_like_it")
    assert hooks.get_layer(m, "features.block3") is m.features.block3
    assert "features.block3.conv1" in hooks.list_layers(m)


def test_record_captures_activations_and_gradients_exactly(shapesnet):
    x = xailab.data.shapes("test", 3).images()
    with hooks.record(shapesnet, ["features.block1", "features.block3"]) as rec:
        out = shapesnet(x)
        out[:, 2].sum().backward()
    # recompute by hand
    with torch.no_grad():
        a1 = shapesnet.features.block1(shapesnet.normalize(x))
    assert torch.allclose(rec.activations["features.block1"], a1, atol=1e-6)
    a3 = shapesnet.features(shapesnet.normalize(x)).detach().requires_grad_(True)
    logits = shapesnet.fc(a3.mean((2, 3)))
    (g,) = torch.autograd.grad(logits[:, 2].sum(), a3)
    assert torch.allclose(rec.gradients["features.block3"], g, atol=1e-6)
    assert rec.activations["features.block3"].shape == (3, 64, 16, 16)
    assert not rec.activations["features.block3"].requires_grad
    assert hooks.count_hooks(shapesnet) == 0
    shapesnet.zero_grad(set_to_none=True)


def test_record_without_detach_keeps_the_graph(shapesnet):
    x = xailab.data.shapes("test", 1).images().requires_grad_(True)
    with hooks.record(shapesnet, "features.block2", detach=False) as rec:
        shapesnet(x)
    rec.activations["features.block2"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    shapesnet.zero_grad(set_to_none=True)


def test_hooks_are_removed_when_the_body_raises(shapesnet):
    with pytest.raises(RuntimeError, match="boom"):
        with hooks.record(shapesnet, ["features.block1", "fc"]):
            assert hooks.count_hooks(shapesnet) == 2
            raise RuntimeError("boom")
    assert hooks.count_hooks(shapesnet) == 0
    with pytest.raises(KeyboardInterrupt):
        with hooks.HookSet() as hs:
            hs.forward(shapesnet.fc, lambda *a: None)
            raise KeyboardInterrupt
    assert hooks.count_hooks(shapesnet) == 0


def test_relu_backward_rules_on_the_two_by_two_example():
    x = torch.tensor([[1.0, -1.0], [2.0, -3.0]], requires_grad=True)
    g_out = torch.tensor([[-1.0, 2.0], [3.0, -4.0]])
    net = nn.Sequential(nn.ReLU())
    expected = {None: [[-1.0, 0.0], [3.0, 0.0]], "guided": [[0.0, 0.0], [3.0, 0.0]],
                "deconvnet": [[0.0, 2.0], [3.0, 0.0]]}
    for rule, want in expected.items():
        x.grad = None
        if rule is None:
            net(x).backward(g_out)
        else:
            with hooks.modified_relu_backward(net, rule):
                net(x).backward(g_out)
        assert x.grad.tolist() == want, rule
    assert hooks.count_hooks(net) == 0


def test_modified_relu_backward_restores_in_place_relus():
    m = models.load_torchvision("resnet18")
    inplace = [mod for mod in m.modules() if isinstance(mod, nn.ReLU)]
    assert all(r.inplace for r in inplace)
    with hooks.modified_relu_backward(m, "guided"):
        assert not any(r.inplace for r in inplace)
    assert all(r.inplace for r in inplace) and hooks.count_hooks(m) == 0
    with pytest.raises(ValueError, match="guided"):
        with hooks.modified_relu_backward(m, "sideways"):
            pass


@pytest.mark.parametrize("arch,expected", [
    ("resnet18", "net.layer4"), ("vgg11", "net.features.19"),
    ("googlenet", "net.inception5b"),            # all four branches, not branch4 alone
    ("inception_v3", "net.Mixed_7c"), ("efficientnet_b0", "net.features"),
    ("convnext_tiny", "net.features"), ("squeezenet1_1", "net.classifier.2"),
    ("regnet_y_400mf", "net.trunk_output"), ("mobilenet_v3_small", "net.features"),
    ("densenet121", "net.features")])
def test_default_layer_is_the_final_feature_map_found_by_shape(arch, expected):
    model = models.load_torchvision(arch)
    assert model.default_layer == expected
    size = model.dry_run_size
    with hooks.record(model, [model.default_layer]) as rec, torch.no_grad():
        model(torch.rand(1, 3, size, size))
    a = rec.activations[model.default_layer]
    assert a.dim() == 4 and a.shape[-1] > 1 and hooks.count_hooks(model) == 0


def test_the_default_layer_of_shapesnet_returns_block3s_feature_map():
    net = models.build("shapesnet").eval()
    found = hooks.last_spatial_layer(net)
    x = torch.rand(2, 3, 64, 64)
    with hooks.record(net, [found, "features.block3"]) as rec, torch.no_grad():
        net(x)
    assert torch.equal(rec.activations[found], rec.activations["features.block3"])


@pytest.mark.parametrize("arch,size,words", [("inception_v3", 64, "at least 75x75"),
                                              ("vit_b_16", 64, "224x224 px only")])
def test_architectures_that_cannot_take_the_size_load_and_say_so(arch, size, words):
    model = models.load_torchvision(arch)            # the dry run no longer raises inside torchvision
    with pytest.raises(ValueError, match=words):
        xailab.explain(model, torch.rand(1, 3, size, size), method="gradcam")
    assert hooks.count_hooks(model) == 0


def test_only_hooks_module_registers_hooks():
    pattern = re.compile(r"register_(forward|full_backward|backward|forward_pre)_hook|\.register_hook\(")
    root = Path(xailab.__file__).parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p.name != "hooks.py" and pattern.search(p.read_text())]
    assert offenders == []


def _cheap_options(name):
    # slow methods on big models: the registry's quick settings keep the sweep short
    return xailab.attribution.get_method(name).cheap


def _methods_for(model_name):
    skip = {"lime", "kernel_shap", "anchors"}           # covered on shapesnet below
    names = [m for m in xailab.methods() if m not in skip
             and xailab.attribution.get_method(m).family != "attention"]   # ViTs only: test_attention
    if model_name != "shapesnet":
        names = [m for m in names if m != "cam" or model_name == "resnet18"]
    return names


@pytest.mark.parametrize("arch", ARCHS)
def test_no_method_leaks_anything_on_torchvision_models(arch):
    model = models.load_torchvision(arch)
    model.train()                                        # unusual mode: must come back as train
    for p in list(model.parameters())[:3]:
        p.requires_grad_(False)                          # unusual flags: must come back as is
    before = hooks.Snapshot.of(model)
    x = torch.rand(1, 3, 64, 64)
    for name in _methods_for(arch):
        try:
            xailab.explain(model, x, target=3, method=name, **_cheap_options(name))
        except Exception as err:                          # e.g. CAM not applicable: fine, if clean
            assert "cam" in name, f"{name} failed on {arch}: {err}"
        assert before.diff(model) == [], name


def test_no_method_leaks_on_shapesnet_even_when_it_raises(shapesnet, monkeypatch):
    x = xailab.data.shapes("test", 2).images()
    before = hooks.Snapshot.of(shapesnet)
    for name in xailab.methods():
        with pytest.raises(ValueError, match="out of range"):
            xailab.explain(shapesnet, x, target=99, method=name)
        assert before.diff(shapesnet) == [], name

    def broken(*args, **kwargs):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(shapesnet.fc, "forward", broken)
    for name in xailab.methods():
        vit_only = xailab.attribution.get_method(name).family == "attention"   # refuses a CNN first
        with pytest.raises(ValueError if vit_only else RuntimeError):
            xailab.explain(shapesnet, x, target=1, method=name, **_cheap_options(name))
        assert before.diff(shapesnet) == [], name


def test_two_hundred_calls_leave_no_hooks_and_no_memory_growth():
    psutil = pytest.importorskip("psutil")
    model = models.load("shapesvgg")
    x = xailab.data.shapes("test", 4).images()
    methods = [m for m in ("gradcam", "gradient", "guided_backprop") if m in xailab.methods()]
    assert methods, "no gradient or CAM methods registered"
    proc = psutil.Process()
    for i in range(220):
        if i == 20:
            rss = proc.memory_info().rss
        xailab.explain(model, x, method=methods[i % len(methods)])
        assert hooks.count_hooks(model) == 0
    growth = (proc.memory_info().rss - rss) / 2**20
    assert growth < 100, f"memory grew by {growth:.0f} MiB over 200 calls"
