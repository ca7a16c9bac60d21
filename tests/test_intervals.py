"""Bootstrap intervals: coverage of a known mean, paired comparisons, and clear errors."""
import numpy as np
import pytest
import torch

from xailab.evaluation import bootstrap_interval, paired_difference, verdict


def test_interval_brackets_the_mean_and_shrinks_with_more_images():
    rng = np.random.default_rng(1)
    small = bootstrap_interval(rng.normal(0.5, 0.1, 16))
    large = bootstrap_interval(rng.normal(0.5, 0.1, 1024))
    assert small.low < small.mean < small.high
    assert large.contains(0.5)
    assert (large.high - large.low) < (small.high - small.low) / 4


def test_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(2)
    hits = sum(bootstrap_interval(rng.exponential(1.0, 64), n_resamples=500, seed=i).contains(1.0)
               for i in range(200))
    assert 0.88 <= hits / 200 <= 0.99


def test_interval_is_seeded_and_accepts_tensors():
    values = torch.linspace(0, 1, 40)
    assert bootstrap_interval(values) == bootstrap_interval(values.numpy())
    assert bootstrap_interval(torch.full((8,), 0.3)).low == pytest.approx(0.3)


def test_paired_difference_sees_a_consistent_gap_that_unpaired_means_hide():
    rng = np.random.default_rng(3)
    per_image = rng.uniform(0, 1, 64)                # images differ a lot from each other
    a, b = per_image + 0.02, per_image               # A is better on every image by a little
    assert paired_difference(a, b).low > 0
    assert verdict(a, b, names=("A", "B")) == "A"
    assert verdict(a, b, higher_is_better=False, names=("A", "B")) == "B"


def test_noise_gives_a_tie():
    rng = np.random.default_rng(4)
    assert verdict(rng.normal(0, 1, 32), rng.normal(0, 1, 32)) == "tie"


@pytest.mark.parametrize("values, words", [([0.5], "at least 2"), ([0.1, float("nan")], "NaN")])
def test_bad_scores_say_what_to_do(values, words):
    with pytest.raises(ValueError, match=words):
        bootstrap_interval(values)


def test_paired_scores_need_the_same_images():
    with pytest.raises(ValueError, match="one value per image"):
        paired_difference([0.1, 0.2, 0.3], [0.1, 0.2])
