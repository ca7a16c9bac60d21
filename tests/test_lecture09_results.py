"""Lecture 09 loads its scores from data/results/lecture09_*.csv (written by
scripts/lecture09_scores.py); the files must match the shipped checkpoints, and a
subset, re-run here, must give the same numbers."""

import pandas as pd
import pytest

from xailab import models
from xailab.evaluation import table

from studytools import load_script

scores_script = load_script("lecture09_scores")
N_IMAGES = table.SETTINGS["n_images"]
SUBSET = 6


@pytest.fixture(scope="module")
def saved():
    return {job: pd.read_csv(path) for job, (path, _) in scores_script.JOBS.items()}


def test_every_file_covers_64_images_per_model_and_method_and_the_shipped_checkpoints(saved):
    expected = {"rules": (scores_script.CNNS, list(scores_script.RULE_VARIANTS)),
                "vit": (["shapesvit"], [*scores_script.VIT_METHODS, table.RANDOM_MAP]),
                "shortcut": (scores_script.VITS, [*scores_script.VIT_METHODS, table.RANDOM_MAP])}
    for job, (names, methods) in expected.items():
        frame = saved[job]
        counts = frame.groupby(["model", "method"]).image.nunique()
        assert sorted(counts.index) == sorted((m, k) for m in names for k in methods), job
        assert (counts == N_IMAGES).all(), job
        for name in names:
            stamps = set(frame.loc[frame.model == name, "checkpoint"].astype(str))
            assert stamps == {models.manifest()[name]["sha256"][:12]}, (
                f"{job}: scores of {name} come from another checkpoint; re-run "
                "scripts/lecture09_scores.py")


def _compare(rows, saved, metrics):
    # deletion and insertion re-run the model on a different batch: float32 differences in
    # the curves move an AUC by up to about 1e-4
    key = ["model", "method", "image"]
    merged = rows.merge(saved, on=key, suffixes=("", "_saved"))
    assert len(merged) == len(rows)
    for metric in metrics:
        tolerance = 1e-3 if metric in ("deletion", "insertion") else 1e-4
        assert (merged[metric] - merged[metric + "_saved"]).abs().max() < tolerance, metric


def test_a_rerun_subset_of_the_vit_scores_matches_the_file(saved):
    rows = scores_script.vit_scores(["attention_rollout", "attention_gradient"], n=SUBSET)
    _compare(rows, saved["vit"], ["deletion", "insertion", "pointing", "mass", "randomised"])


def test_a_rerun_subset_of_the_rule_variants_matches_the_file(saved):
    rows = scores_script.rule_scores(["shapesnet"], n=SUBSET)
    _compare(rows, saved["rules"], ["deletion", "pointing", "mass"])


def test_a_rerun_subset_of_the_vit_shortcut_scores_matches_the_file(saved):
    rows = scores_script.shortcut_scores(methods=["attention", "token_gradcam"], n=SUBSET)
    _compare(rows, saved["shortcut"], ["watermark", "patches", "quarter", "predicted"])


def test_the_watermark_sits_in_four_patch_tokens():
    _, marks = scores_script.shortcut_data(2)
    patches = scores_script.watermark_patches(marks)
    assert (patches & marks).sum() == marks.sum()
    assert patches.float().mean((1, 2)).tolist() == [4 / 64, 4 / 64]
