"""The explorer widgets, driven programmatically (no browser): every control
recomputes the right views with the right layer, class and method."""
import time

import pytest
import torch

import xailab
from xailab import data, hooks, models, widgets


@pytest.fixture(scope="module")
def images():
    return data.shapes("test", 6, seed=3)


@pytest.fixture()
def explorer(shapesnet, images):
    return widgets.Explorer(shapesnet, images, background=False)


def _png(view):
    return bytes(view.value)


def test_explorer_starts_with_every_view_rendered_for_the_prediction(explorer, shapesnet, images):
    assert all(_png(v).startswith(b"\x89PNG") for v in explorer.views.values())
    assert explorer.renders == {"image": 1, "top5": 1, "features": 1, "explanation": 1}
    pred = int(shapesnet(images.images()[:1]).argmax())
    assert explorer.last == dict(image=0, layer=shapesnet.default_layer, target=pred, method="gradcam")
    assert explorer.layer.value == shapesnet.default_layer
    assert set(explorer.layer.options) == set(hooks.spatial_layers(shapesnet))
    assert list(explorer.method.options) == xailab.methods()
    assert [label for label, _ in explorer.target.options][1:] == shapesnet.classes
    assert explorer.errors == []


def test_class_control_recomputes_only_the_explanation(explorer):
    before = _png(explorer.views["explanation"])
    explorer.target.value = 4
    assert explorer.last["target"] == 4
    assert explorer.renders["explanation"] == 2 and explorer.renders["features"] == 1
    assert _png(explorer.views["explanation"]) != before


def test_layer_control_changes_the_cam_layer_and_the_feature_grid(explorer):
    grid = _png(explorer.views["features"])
    explorer.layer.value = "features.block2"
    assert explorer.last["layer"] == "features.block2"
    assert explorer.renders["features"] == 2 and explorer.renders["explanation"] == 2
    assert _png(explorer.views["features"]) != grid
    explorer.method.value = "gradient"                  # a layer-free method ignores it
    n = explorer.renders["explanation"]
    explorer.layer.value = "features.block1"
    assert explorer.renders["explanation"] == n and explorer.last["layer"] is None


def test_image_and_method_controls(explorer, shapesnet, images):
    explorer.image.value = 2
    assert explorer.renders == {"image": 2, "top5": 2, "features": 2, "explanation": 2}
    assert explorer.last["image"] == 2
    assert explorer.last["target"] == int(shapesnet(images.images()[2:3]).argmax())
    for name in ("gradient", "cam", "guided_backprop", "occlusion"):
        explorer.method.value = name
        assert explorer.last["method"] == name and explorer.errors == []


def test_explanation_view_shows_what_explain_returns(shapesnet, images):
    ex = widgets.Explorer(shapesnet, images, method="gradient", background=False)
    x = images.images()[:1]
    heat = xailab.explain(shapesnet, x, ex.current_target(), method="gradient")
    want = widgets.render_explanation(x[0], heat[0], f"gradient · {shapesnet.classes[ex.current_target()]}")
    assert _png(ex.views["explanation"]) == want


def test_errors_are_shown_in_the_widget_not_raised(shapesnet, images):
    vgg = models.load("shapesvgg")
    ex = widgets.Explorer(vgg, images, method="gradcam", background=False)
    ex.method.value = "cam"                               # not applicable on a flatten+FC head
    assert ex.errors and "gradcam" in ex.status.value
    assert hooks.count_hooks(vgg) == 0


def test_background_computation_is_cancelled_by_a_new_choice(shapesnet, images):
    before = hooks.Snapshot.of(shapesnet)
    ex = widgets.Explorer(shapesnet, images, method="lime", options={"lime": {"n_samples": 4000}})
    deadline = time.time() + 30
    while "lime" not in ex.status.value and time.time() < deadline:
        time.sleep(0.02)
    assert "computing lime" in ex.status.value
    start = time.time()
    ex.method.value = "gradient"
    ex.wait()
    assert ex.last["method"] == "gradient" and ex.errors == []
    assert ex.renders["explanation"] == 1                 # lime never finished
    assert time.time() - start < 20
    assert before.diff(shapesnet) == []


def test_layer_browser_walks_through_depth(shapesnet, images):
    lb = widgets.LayerBrowser(shapesnet, images[0][0], background=False)
    assert lb.current_layer == shapesnet.default_layer and lb.renders["features"] == 1
    first = _png(lb.views["features"])
    lb.depth.value = 0
    assert lb.current_layer == hooks.spatial_layers(shapesnet)[0] and lb.renders["features"] == 2
    assert _png(lb.views["features"]) != first and lb.current_layer in lb.label.value


def test_class_compare_shows_two_classes(shapesnet, images):
    cc = widgets.ClassCompare(shapesnet, images[0][0], classes=(0, 5), background=False)
    assert _png(cc.views["left"]) != _png(cc.views["right"])
    cc.right.value = 0
    assert _png(cc.views["left"]) == _png(cc.views["right"])
    assert cc.renders == {"left": 1, "right": 2}
    cc.method.value = "gradient"
    assert cc.renders == {"left": 2, "right": 3}
    with pytest.raises(ValueError, match="out of range"):
        widgets.ClassCompare(shapesnet, images[0][0], classes=(0, 9), background=False)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
def test_works_on_torchvision_models(arch):
    model = models.load_torchvision(arch)
    x = torch.rand(2, 3, 64, 64)
    ex = widgets.Explorer(model, x, background=False)
    assert ex.layer.value == model.default_layer and ex.errors == []
    ex.target.value = 7
    assert ex.last["target"] == 7 and len(ex.target.options) == 1001
    assert hooks.count_hooks(model) == 0


def test_images_from_a_folder_and_bad_input(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (40, 30), (80 * i, 20, 200)).save(tmp_path / f"{i}.png")
    x = widgets.load_images(tmp_path, size=64)
    assert x.shape == (3, 3, 64, 64) and 0 <= x.min() and x.max() <= 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        widgets.load_images(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        widgets.load_images(torch.full((1, 3, 8, 8), 255.0))
    with pytest.raises(ValueError, match=r"\[N,3,H,W\]"):
        widgets.load_images(torch.rand(2, 8, 8))


def test_widgets_leave_a_training_model_as_they_found_it(images):
    model = models.load("shapesnet").train()
    before = hooks.Snapshot.of(model)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    x = images.images()
    ex = widgets.Explorer(model, images, background=False)
    ex.image.value = 2
    ex.layer.value = "features.block2"
    widgets.LayerBrowser(model, x[0], background=False)
    widgets.ClassCompare(model, x[0], background=False)
    assert model.training and before.diff(model) == [] and hooks.count_hooks(model) == 0
    after = {k: v for k, v in model.state_dict().items() if "running" in k}
    assert all(torch.equal(stats[k], after[k]) for k in stats), "BatchNorm running statistics changed"


def test_explorer_on_the_vision_transformer_offers_its_blocks_and_attention_methods(images):
    vit = models.load("shapesvit")
    ex = widgets.Explorer(vit, images, method="attention", background=False)
    blocks = [f"encoder.layers.encoder_layer_{i}" for i in range(4)]
    assert list(ex.layer.options) == blocks and ex.layer.value == blocks[-1]
    assert {"attention", "attention_rollout", "attention_gradient", "token_gradcam"} <= set(ex.method.options)
    assert ex.errors == [] and ex.last["layer"] == blocks[-1]
    before = _png(ex.views["explanation"])
    ex.layer.value = blocks[0]                        # an earlier block: another attention map
    assert ex.last["layer"] == blocks[0] and _png(ex.views["explanation"]) != before
    for method in ("attention_rollout", "attention_gradient", "token_gradcam", "gradient"):
        ex.method.value = method
        assert ex.last["method"] == method and ex.errors == []
    ex.method.value = "gradcam"                       # CAM needs a spatial map: an error in the widget
    assert ex.errors and "spatial feature map" in ex.errors[-1]
    assert hooks.count_hooks(vit) == 0
