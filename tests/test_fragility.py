"""The fragility attack: within its budget, prediction kept, gradient map moved off its region."""
import pytest
import torch

from xailab import data, models
from xailab.evaluation import fragility as F


@pytest.fixture(scope="module")
def setup():
    model = models.load("shapesnet")
    ds = data.shapes("test", 6, seed=0)
    x = torch.stack([ds[i][0] for i in range(6)])
    masks = torch.stack([ds.ground_truth(i)["mask"] for i in range(6)])
    return model, x, masks


def test_attack_keeps_the_prediction_within_its_budget_and_moves_mass_off_the_object(setup):
    model, x, masks = setup
    attack = F.fragility_attack(model, x, region=masks, epsilon=3 / 255, steps=12)
    assert attack.prediction_kept.all()
    assert torch.equal(model(attack.x).argmax(1), model(x).argmax(1))
    assert attack.linf.max() <= 3 / 255 + 1e-6 and attack.x.min() >= 0 and attack.x.max() <= 1
    assert (attack.mass_after < attack.mass_before).all()
    assert attack.mass_after.mean() < 0.6 * attack.mass_before.mean()
    # a random perturbation of the same size moves the mass much less
    sign = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noisy = (x + 3 / 255 * sign).clamp(0, 1)
    target = attack.target
    noisy_mass = F.region_mass(F.gradient_map(model, noisy, target), masks.float())
    assert (attack.mass_after < noisy_mass).all()


def test_default_region_is_the_original_top_k_and_map_shift_reports_it(setup):
    model, x, _ = setup
    attack = F.fragility_attack(model, x[:2], steps=6, k=200)
    before = F.gradient_map(model, x[:2], attack.target).detach()
    after = F.gradient_map(model, attack.x, attack.target).detach()
    shift = F.map_shift(before, after, k=200)
    assert torch.allclose(attack.mass_before, F.region_mass(before, F.top_k_region(before, 200).float()))
    assert (shift["top_k"] < 1).all() and (shift["spearman"] < 1).all()
    same = F.map_shift(before, before, k=200)
    assert torch.allclose(same["top_k"], torch.ones(2)) and torch.allclose(same["spearman"], torch.ones(2))


def test_top_k_intersection_counts_shared_pixels():
    a = torch.arange(16.0).view(1, 4, 4)
    b = a.flip(-1)
    assert F.top_k_intersection(a, a, 4).item() == 1.0
    assert F.top_k_intersection(a, b, 4).item() == 1.0          # same last row, reversed
    assert F.top_k_intersection(a, -a, 4).item() == 0.0


def test_smooth_copy_replaces_relus_and_leaves_the_model_alone(setup):
    model = setup[0]
    before = [type(m) for m in model.modules()]
    smooth = F.smooth_copy(model, beta=50.0)
    assert not any(isinstance(m, torch.nn.ReLU) for m in smooth.modules())
    assert [type(m) for m in model.modules()] == before
    x = setup[1][:2]
    assert torch.allclose(smooth(x), model(x), atol=0.1)        # a sharp softplus is close to ReLU


def test_attack_leaks_nothing(setup):
    model = setup[0]
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        F.fragility_attack(model, setup[1][:2], steps=2)
        assert model.training and [p.requires_grad for p in model.parameters()] == flags
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    finally:
        model.eval()


@pytest.mark.parametrize("kwargs, words", [(dict(epsilon=4), "L-infinity budget"), (dict(steps=0), "steps >= 1"),
                                           (dict(k=10**6), "k <= H\\*W")])
def test_bad_settings_say_what_to_do(setup, kwargs, words):
    with pytest.raises(ValueError, match=words):
        F.fragility_attack(setup[0], setup[1][:1], **kwargs)


def test_a_model_without_relu_modules_is_refused():
    with pytest.raises(ValueError, match="no nn.ReLU"):
        F.smooth_copy(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 2)))


MAP_OPTIONS = {"gradient": {}, "smoothgrad": dict(n_samples=2), "integrated_gradients": dict(n_steps=2),
               "gradcam": {}}


@pytest.mark.parametrize("method", list(MAP_OPTIONS))
def test_every_method_is_attacked_on_its_own_map_within_budget_keeping_the_prediction(setup, method):
    model, x, masks = setup
    x, masks = x[:3], masks[:3]
    attack = F.fragility_attack(model, x, region=masks, epsilon=8 / 255, steps=4, method=method,
                                **MAP_OPTIONS[method])
    assert attack.x.shape == x.shape and attack.target.shape == (3,)
    assert attack.prediction_kept.all() and torch.equal(model(attack.x).argmax(1), model(x).argmax(1))
    assert attack.linf.max() <= 8 / 255 + 1e-6 and (attack.x - x).abs().max() <= 8 / 255 + 1e-6
    assert attack.x.min() >= 0 and attack.x.max() <= 1 and not attack.x.requires_grad
    assert (attack.mass_after <= attack.mass_before).all()
    assert attack.mass_after.mean() < attack.mass_before.mean()
    heat = F.attacked_map(method, **MAP_OPTIONS[method])
    assert torch.allclose(attack.mass_after, F.region_mass(heat(model, attack.x, attack.target), masks.float()),
                          atol=1e-5)


def test_images_are_attacked_batch_by_batch_with_the_same_result(setup):
    model, x, masks = setup
    one = F.fragility_attack(model, x[:3], region=masks[:3], steps=3)
    split = F.fragility_attack(model, x[:3], region=masks[:3], steps=3, batch_size=2)
    assert torch.allclose(one.mass_after, split.mass_after, atol=1e-5)
    assert torch.equal(one.target, split.target) and split.prediction_kept.all()


def test_the_rebuilt_maps_are_the_library_maps(setup):
    import xailab
    model, x = setup[0], setup[1][:2]
    t = model(x).argmax(1)
    raw = {m: xailab.explain(model, x, t, m, reduce=None, **o)
           for m, o in [("gradient", {}), ("smoothgrad", dict(n_samples=3, seed=0)),
                        ("integrated_gradients", dict(n_steps=4))]}
    assert torch.allclose(F.gradient_map(model, x, t), raw["gradient"].abs().sum(1), atol=1e-6)
    assert torch.allclose(F.smoothgrad_map(model, x, t, n_samples=3), raw["smoothgrad"].abs().sum(1), atol=1e-5)
    assert torch.allclose(F.integrated_gradients_map(model, x, t, n_steps=4),
                          raw["integrated_gradients"].abs().sum(1), atol=1e-5)
    assert torch.allclose(F.gradcam_map(model, x, t), xailab.explain(model, x, t, "gradcam"), atol=1e-5)


def test_the_smooth_maps_are_differentiable_with_respect_to_the_input(setup):
    model, x = setup[0], setup[1][:1]
    smooth, t = F.smooth_copy(model), model(x).argmax(1)
    for method, options in MAP_OPTIONS.items():
        moving = x.clone().requires_grad_(True)
        grad, = torch.autograd.grad(F.attacked_map(method, **options)(smooth, moving, t, graph=True).sum(), moving)
        assert grad.abs().sum() > 0, method


def test_the_gradcam_attack_leaves_no_hooks_and_restores_the_model(setup):
    model = setup[0]
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    try:
        F.fragility_attack(model, setup[1][:1], steps=1, method="gradcam")
        assert model.training and [p.requires_grad for p in model.parameters()] == flags
        assert not any(m._forward_hooks or m._backward_hooks or m._forward_pre_hooks for m in model.modules())
        assert all(p.grad is None for p in model.parameters())
    finally:
        model.eval()


def test_random_perturbation_is_the_control_of_the_same_budget(setup):
    x = setup[1]
    noisy = F.random_perturbation(x, 8 / 255, seed=1)
    assert (noisy - x).abs().max() <= 8 / 255 + 1e-6 and noisy.min() >= 0 and noisy.max() <= 1
    moved = (noisy - x).abs()
    assert ((moved > 7.9 / 255) | (noisy == 0) | (noisy == 1)).all()      # every value moved fully or clipped
    assert torch.equal(noisy, F.random_perturbation(x, 8 / 255, seed=1))


@pytest.mark.parametrize("kwargs, words", [(dict(method="lrp"), "knows the maps of"),
                                           (dict(method="gradcam", n_steps=3), "takes the options")])
def test_unknown_methods_and_options_are_refused(setup, kwargs, words):
    with pytest.raises(ValueError, match=words):
        F.fragility_attack(setup[0], setup[1][:1], **kwargs)
