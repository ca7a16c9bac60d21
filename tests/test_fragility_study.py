"""Lecture 08 loads the fragility study from data/results/fragility_study.csv; the first
batch of images, re-run here for two methods, must give the same numbers."""

import pandas as pd
import pytest

from studytools import load_script

study_script = load_script("fragility_study")


@pytest.fixture(scope="module")
def saved():
    return pd.read_csv(study_script.OUT)


def test_the_study_covers_every_method_and_attack_on_32_images_within_budget(saved):
    assert set(saved.method) == set(study_script.METHODS)
    for method in study_script.METHODS:
        attacks = set(saved[saved.method == method].attack)
        assert attacks == set(study_script.ATTACKS) - ({"transfer"} if method == "gradient" else set())
    counts = saved.groupby(["method", "attack"]).image.nunique()
    assert (counts == study_script.N_IMAGES).all() and study_script.N_IMAGES >= 32
    assert saved.linf_grey.max() <= round(study_script.EPSILON * 255)
    assert saved[saved.attack != "random"].prediction_kept.all()   # the attack never flips the class
    assert saved[["top_k", "spearman", "mass_before", "mass_after"]].notna().all().all()


def test_a_rerun_of_the_first_batch_matches_the_saved_study(saved):
    n = study_script.BATCH                      # the attack runs batch by batch: same images together
    rows = pd.DataFrame(study_script.study(("gradient", "gradcam"), n_images=n, log=lambda s: None))
    key = ["model", "method", "attack", "image"]
    merged = rows.merge(saved, on=key, suffixes=("", "_saved"))
    assert len(merged) == len(rows) == n * 5    # gradient: targeted, random; gradcam: + transfer
    assert (merged.prediction_kept == merged.prediction_kept_saved).all()
    assert (merged.linf_grey == merged.linf_grey_saved).all()
    for column in ["mass_before", "mass_after", "top_k", "spearman"]:
        assert (merged[column] - merged[column + "_saved"]).abs().max() < 1e-3, column
