"""The comparison table lecture 08 loads: data/results/*.csv cover every registered
method with 64 images per model, and a small subset recomputed now matches them."""
import numpy as np
import pandas as pd
import pytest

import xailab
from xailab import models
from xailab.evaluation import table

REGENERATE = f"run `{table.COMMAND}` (it computes only what is missing)"


@pytest.fixture(scope="module")
def scores():
    assert table.SCORES_CSV.exists(), f"{table.SCORES_CSV} is missing: {REGENERATE}"
    return pd.read_csv(table.SCORES_CSV)


@pytest.fixture(scope="module")
def shortcut():
    assert table.SHORTCUT_CSV.exists(), f"{table.SHORTCUT_CSV} is missing: {REGENERATE}"
    return pd.read_csv(table.SHORTCUT_CSV)


def test_the_tables_cover_every_registered_method(scores, shortcut):
    for frame, names in [(scores, table.MODELS), (shortcut, table.SHORTCUT_MODELS)]:
        missing = {m: k for m, k in table.missing_methods(frame, names, [*xailab.methods(), table.RANDOM_MAP]).items()
                   if k}
        assert not missing, f"the results miss registered methods {missing}: {REGENERATE}"


def test_every_score_rests_on_64_images(scores, shortcut):
    n = table.SETTINGS["n_images"]
    assert n >= 64
    for frame in (scores, shortcut):
        counts = frame.dropna(subset=["image"]).groupby(["model", "method"])["image"].nunique()
        assert (counts == n).all(), f"not {n} images for {list(counts[counts != n].index)}: {REGENERATE}"
    scored = scores.dropna(subset=["image"])
    assert scored[list(table.METRICS)].drop(columns=["sensitivity", "randomised"]).notna().all().all()
    noted = scores[scores["image"].isna()]
    assert ("shapesvgg", "cam") in set(zip(noted["model"], noted["method"]))        # CAM needs GAP
    assert noted["note"].str.startswith("not applicable").all()


def _settings():
    return {k: table.SETTINGS[k] for k in ("step", "tolerance", "n_sensitivity", "randomise_layers", "seed")}


@pytest.mark.parametrize("method", ["gradient", "gradcam"])
def test_a_subset_recomputed_matches_the_csv(scores, method):
    x, _, masks = table.course_data()
    k = 3
    net = models.load("shapesnet")
    now = table.image_scores(net, x[:k], masks[:k], method, None, table.OPTIONS.get(method), ids=range(k),
                             **_settings())
    rows = scores[(scores["model"] == "shapesnet") & (scores["method"] == method)].sort_values("image")[:k]
    for metric in table.METRICS:
        np.testing.assert_allclose(now[metric].numpy(), rows[metric].to_numpy(), atol=2e-4, err_msg=(
            f"{method} {metric} differs from {table.SCORES_CSV.name}: the library changed; "
            f"run `{table.COMMAND} --redo {method}`"))


def test_the_shortcut_subset_matches_the_csv(shortcut):
    now = table.shortcut_scores({"shapesnet-shortcut": models.load("shapesnet-shortcut")}, ["gradcam", "rise"],
                                n=4, seed=table.SETTINGS["shortcut_seed"], progress=False)
    for method in ["gradcam", "rise", table.RANDOM_MAP]:
        old = shortcut[(shortcut["model"] == "shapesnet-shortcut") & (shortcut["method"] == method)]
        old = old.sort_values("image")[:4]
        new = now[now["method"] == method]
        for metric in ["watermark", "quarter"]:
            np.testing.assert_allclose(new[metric].to_numpy(), old[metric].to_numpy(), atol=2e-4,
                                       err_msg=f"run `{table.COMMAND} --redo {method}`")


def test_summary_gives_every_mean_an_interval(scores):
    rows = table.summary(scores[scores["method"].isin(["gradient", "cam"])])
    gradient = rows[(rows["model"] == "shapesnet") & (rows["method"] == "gradient")].iloc[0]
    values = table.per_image(scores, "shapesnet", "gradient", "deletion")
    assert gradient["images"] == 64 and gradient["deletion"].mean == pytest.approx(values.mean())
    assert gradient["deletion"].low < gradient["deletion"].mean < gradient["deletion"].high
    cam = rows[(rows["model"] == "shapesvgg") & (rows["method"] == "cam")].iloc[0]
    assert cam["images"] == 0 and cam["deletion"] is None and "gradcam" in cam["note"]
    text = table.format_table(rows, ["model", "method", "deletion", "note"])
    assert f"{gradient['deletion'].mean:.2f} [" in text
    with pytest.raises(KeyError, match="python -m xailab.evaluation"):
        table.per_image(scores, "shapesnet", "no such method", "deletion")
