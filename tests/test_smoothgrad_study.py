"""Lecture 04 loads the SmoothGrad study from data/results/smoothgrad_study.csv; a
subset, re-run here, must give the same numbers."""

import pandas as pd
import pytest

from studytools import load_script

study_script = load_script("smoothgrad_study")


@pytest.fixture(scope="module")
def saved():
    return pd.read_csv(study_script.OUT)


def test_the_study_covers_both_models_every_noise_level_and_32_images(saved):
    for name in study_script.MODELS:
        rows = saved[saved.model == name]
        assert sorted(rows.noise.unique()) == [0.0, *study_script.NOISES]
        assert sorted(rows.n_samples.unique()) == [1, 16, 32, 64, 128, 256]
        counts = rows.groupby(["noise", "n_samples"]).image.nunique()
        assert (counts == study_script.N_IMAGES).all()


def test_a_rerun_subset_matches_the_saved_study(saved):
    # all 32 images: the noise of a batch is drawn for the whole batch at once
    rows = pd.DataFrame(study_script.study("shapesnet", noises=(0.15,), n_chunks=2))
    key = ["model", "noise", "n_samples", "image"]
    merged = rows.merge(saved, on=key, suffixes=("", "_saved"))
    assert len(merged) == len(rows) == 32 * 3         # plain gradient, n = 16, n = 32
    for column in ["share_abs", "share_signed"]:
        assert (merged[column] - merged[column + "_saved"]).abs().max() < 1e-4
    split = merged[merged.n_samples == 16]
    assert (split.split_half.astype(float) - split.split_half_saved.astype(float)).abs().max() < 1e-4
