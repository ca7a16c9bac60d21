"""Evaluation metrics on hand-made inputs with known answers, against Captum where
it has the same metric, and the sanity checks' promise: the original model is
never touched."""
import pytest
import torch
from torch import nn

import xailab
from xailab import data, evaluation, hooks, models


class TopLeft(nn.Module):
    """Two classes; the score of class 1 grows with the top-left pixel's red value."""

    def forward(self, x):
        s = 10 * (x[:, 0, 0, 0] - 0.5)
        return torch.stack([torch.zeros_like(s), s], 1)


@pytest.fixture(scope="module")
def shapes_batch():
    ds = data.shapes("test", 8, seed=5)
    masks = torch.stack([ds.ground_truth(i)["mask"] for i in range(len(ds))])
    return ds.images(), ds.labels, masks


def test_auc_of_known_curves():
    frac = torch.linspace(0, 1, 5)
    curves = torch.stack([torch.full((5,), 0.3), 1 - frac, frac ** 2])
    auc = evaluation._curve_auc(curves, frac)
    assert torch.allclose(auc, torch.tensor([0.3, 0.5, 0.34375]))   # trapezoid on x^2: 0.34375


def test_deletion_curve_starts_unmodified_and_breaks_ties_by_index():
    x = torch.full((1, 3, 8, 8), 0.9)
    flat = torch.zeros(1, 8, 8)                                     # all ties: raster order
    auc, curves, frac = evaluation.deletion(TopLeft(), x, flat, target=1, step=4, return_curves=True)
    p_full, p_gone = torch.sigmoid(torch.tensor(4.0)), torch.sigmoid(torch.tensor(-5.0))
    assert curves.shape == (1, 17) and frac[0] == 0 and frac[-1] == 1
    assert torch.isclose(curves[0, 0], p_full) and torch.allclose(curves[0, 1:], p_gone.expand(16))
    late = torch.zeros(1, 8, 8)
    late[0, 0, 0] = -1                                              # the pixel that matters goes last
    auc_late = evaluation.deletion(TopLeft(), x, late, target=1, step=4)
    assert auc < 0.1 < 0.9 < auc_late
    # the exact value: flat at p_full until the last step, then the trapezoid down to p_gone
    assert torch.isclose(auc_late[0], p_full * 15 / 16 + (p_full + p_gone) / 2 / 16, atol=1e-6)


def test_insertion_goes_from_the_blurred_image_to_the_original(shapesnet, shapes_batch):
    x, y, masks = shapes_batch
    heat = xailab.explain(shapesnet, x, y, method="gradcam")
    auc, curves, frac = evaluation.insertion(shapesnet, x, heat, y, step=512, return_curves=True)
    with torch.no_grad():
        p = torch.softmax(shapesnet(x), 1).gather(1, y[:, None])[:, 0]
        p_blur = torch.softmax(shapesnet(evaluation.blurred(x)), 1).gather(1, y[:, None])[:, 0]
    assert curves.shape == (8, 9)
    assert torch.allclose(curves[:, 0], p_blur, atol=1e-5) and torch.allclose(curves[:, -1], p, atol=1e-5)
    assert ((auc >= 0) & (auc <= 1)).all()


def test_deletion_prefers_the_object_over_the_background(shapesnet, shapes_batch):
    x, y, masks = shapes_batch
    on_object = masks.float() + 0.01 * torch.rand(masks.shape, generator=torch.Generator().manual_seed(0))
    good = evaluation.deletion(shapesnet, x, on_object, y, step=128)
    bad = evaluation.deletion(shapesnet, x, -on_object, y, step=128)
    assert good.mean() < bad.mean()


def test_pointing_game_with_tolerance():
    masks = torch.zeros(2, 20, 20, dtype=torch.bool)
    masks[:, 5:10, 5:10] = True
    heat = torch.zeros(2, 20, 20)
    heat[0, 7, 7] = 1                    # inside
    heat[1, 7, 15] = 1                   # 6 px right of the mask's edge (x = 9)
    assert evaluation.pointing_game(heat, masks, tolerance=3).tolist() == [True, False]
    assert evaluation.pointing_game(heat, masks, tolerance=6).tolist() == [True, True]


def test_relevance_mass_and_rank():
    masks = torch.zeros(3, 10, 10, dtype=torch.bool)
    masks[:, :5] = True
    heat = torch.stack([masks[0].float(), (~masks[1]).float(), torch.ones(10, 10)])
    assert torch.allclose(evaluation.relevance_mass(heat, masks), torch.tensor([1.0, 0.0, 0.5]))
    assert torch.allclose(evaluation.relevance_rank(heat, masks), torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="non-negative"):
        evaluation.relevance_mass(heat - 0.5, masks)
    with pytest.raises(ValueError, match="must match"):
        evaluation.relevance_mass(heat, masks[:, :5])


def test_relevance_mass_above_the_mean_ignores_a_constant_offset():
    masks = torch.zeros(2, 10, 10, dtype=torch.bool)
    masks[:, :5] = True
    heat = torch.stack([0.4 + 0.1 * masks[0].float(), torch.full((10, 10), 0.3)])   # RISE-like: no zero point
    assert float(evaluation.relevance_mass(heat, masks)[0]) == pytest.approx(0.5 / 0.9)
    assert torch.allclose(evaluation.relevance_mass(heat, masks, above_mean=True), torch.tensor([1.0, 0.0]))
    assert torch.allclose(evaluation.relevance_mass(heat - 0.4, masks, above_mean=True),
                          evaluation.relevance_mass(heat, masks, above_mean=True))


def test_max_sensitivity_equals_captum_with_the_same_perturbations(shapesnet, shapes_batch):
    from captum.metrics import sensitivity_max

    x, y, _ = shapes_batch
    x, y = x[:3], y[:3]
    perturb = evaluation.uniform_perturbation(radius=0.05, seed=3)
    for method in ("gradient", "gradcam"):
        ours = evaluation.max_sensitivity(shapesnet, x, method, y, n_perturbations=4, perturb=perturb)
        def explain(inp, target):          # Captum passes and expects tuples of tensors
            return (xailab.explain(shapesnet, inp[0] if isinstance(inp, tuple) else inp, target, method),)

        theirs = sensitivity_max(explain,
                                 x, perturb_func=lambda inp: perturb(inp), n_perturb_samples=4, target=y)
        assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-6), method
    assert (ours > 0).all()


def test_similarities_of_identical_and_reversed_maps():
    a = torch.rand(2, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(evaluation.spearman(a, a), torch.ones(2))
    assert torch.allclose(evaluation.spearman(a, a.max() + 1 - a), -torch.ones(2), atol=1e-5)  # order reversed
    assert torch.allclose(evaluation.ssim(a, a), torch.ones(2), atol=1e-6)
    assert torch.allclose(evaluation.hog_similarity(a, a), torch.ones(2), atol=1e-6)


def test_model_randomisation_never_touches_the_original(shapesnet, shapes_batch):
    x, y, _ = shapes_batch
    state = {k: v.clone() for k, v in shapesnet.state_dict().items()}
    before = hooks.Snapshot.of(shapesnet)
    rows = evaluation.model_randomisation(shapesnet, x[:4], "gradient", y[:4])
    assert [r["layer"] for r in rows] == ["(trained)"] + evaluation.parameter_layers(shapesnet)
    assert rows[0]["spearman"] == 1.0 and rows[-1]["spearman"] < 0.5
    assert all(torch.equal(v, state[k]) for k, v in shapesnet.state_dict().items())
    assert before.diff(shapesnet) == []
    indep = evaluation.model_randomisation(shapesnet, x[:2], "gradcam", y[:2], cascading=False,
                                           layers=["fc"], similarities=("spearman",))
    assert len(indep) == 2 and indep[1]["spearman"] < 0.9
    with pytest.raises(ValueError, match="similarity"):
        evaluation.model_randomisation(shapesnet, x[:2], "gradient", similarities=("cosine",))


def test_data_randomisation_model_memorised_noise(shapes_batch):
    entry = models.manifest()["shapesnet-random-labels"]
    assert entry["train_accuracy"] >= 0.9 and entry["val_accuracy"] <= 0.3
    x, y, _ = shapes_batch
    sims = evaluation.data_randomisation(models.load("shapesnet"), models.load("shapesnet-random-labels"),
                                         x[:4], "gradcam", y[:4])
    assert set(sims) == {"spearman", "ssim", "hog"} and sims["spearman"] < 0.9


def test_shortcut_exposure_separates_the_shortcut_model(shapesnet):
    shortcut = models.load("shapesnet-shortcut")
    on_shortcut = evaluation.shortcut_exposure(shortcut, "gradient", n=16)
    on_clean = evaluation.shortcut_exposure(shapesnet, "gradient", n=16)
    assert on_shortcut["area"] == on_clean["area"] < 0.05
    assert on_shortcut["mass"] > 2 * on_shortcut["area"] and on_shortcut["mass"] > on_clean["mass"]


CHEAP = {name: xailab.attribution.get_method(name).cheap for name in xailab.methods()}


def test_comparison_table_covers_every_registered_method(shapesnet, shapes_batch):
    x, y, masks = shapes_batch
    rows = evaluation.comparison_table({"shapesnet": shapesnet}, x[:2], masks[:2], options=CHEAP, step=1024,
                                       n_sensitivity=1, progress=False)
    assert [r["method"] for r in rows] == [*xailab.methods(), "(random map)"]
    noted = [r for r in rows if isinstance(r.get("note"), str)]      # e.g. attention maps on a CNN
    assert all(r["note"].startswith("not applicable") and r["images"] == 0 for r in noted)
    rows = [r for r in rows if r not in noted]
    assert all(r["images"] == 2 for r in rows)
    assert all(0 <= r["deletion"].low <= r["deletion"].mean <= r["deletion"].high <= 1 for r in rows)
    assert all(0 <= r["insertion"].mean <= 1 and 0 <= r["mass"].mean <= 1 for r in rows)
    assert all(r["sensitivity"].mean >= 0 and -1 <= r["randomised"].mean <= 1 for r in rows[:-1])
    assert rows[-1]["sensitivity"] is None
    text = evaluation.format_table(rows, ["model", "method", "deletion", "insertion"])
    assert text.count("\n") == len(rows) and "insertion" in text.splitlines()[0] and " [" in text
    # CAM cannot run on a flatten + FC head: a note instead of scores
    rows = evaluation.comparison_table({"shapesvgg": models.load("shapesvgg")}, x[:2], masks[:2],
                                       methods=["cam", "gradcam"], step=1024, n_sensitivity=1, progress=False)
    assert rows[0]["images"] == 0 and rows[0]["deletion"] is None and "gradcam" in rows[0]["note"]
    assert rows[1]["images"] == 2 and rows[2]["method"] == "(random map)"


def test_shortcut_scores_measure_the_watermark_and_its_quarter():
    shortcut = models.load("shapesnet-shortcut")
    rows = evaluation.summary(evaluation.shortcut_scores({"shortcut": shortcut}, ["gradcam"], n=8, progress=False))
    gradcam, noise = rows.iloc[0], rows.iloc[1]
    assert noise["method"] == "(random map)" and noise["quarter"].mean == pytest.approx(0.25, abs=0.01)
    assert gradcam["watermark"].mean > 2 * noise["watermark"].mean and gradcam["quarter"].mean > 0.4


def test_bad_input_says_what_to_do(shapesnet, shapes_batch):
    x, y, masks = shapes_batch
    with pytest.raises(ValueError, match=r"\[N,H,W\]"):
        evaluation.deletion(shapesnet, x, torch.rand(8, 3, 64, 64), y)
    with pytest.raises(ValueError, match="step"):
        evaluation.insertion(shapesnet, x, masks.float(), y, step=0)
    with pytest.raises(ValueError, match="out of range"):
        evaluation.deletion(shapesnet, x, masks.float(), target=7)
    with pytest.raises(ValueError, match="n_perturbations"):
        evaluation.max_sensitivity(shapesnet, x, "gradient", n_perturbations=0)
