"""Calibration, temperature, referral and count intervals (bench.metrics.calibration, bench.metrics.statistics),
with every expected value written by hand or from an independent library (scipy's exact binomial test)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from bench.metrics.calibration import (apply_temperature, aurc, calibration_metrics, fit_temperature,
                                       referral_outcome, referral_threshold)
from bench.metrics.statistics import proportion_interval

pytestmark = pytest.mark.known_answer

# Four images, two classes. Top-label confidence and whether it is right:
#   0.9 right, 0.8 wrong, 0.7 right, 0.6 right; each alone in one of the 15 bins of width 1/15.
PROBS = [[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]]
LABELS = [0, 1, 1, 1]


def test_calibration_numbers_by_hand():
    m = calibration_metrics(PROBS, LABELS)
    # ECE: the mean gap |accuracy - confidence| weighted by bin size: (0.1 + 0.8 + 0.3 + 0.4) / 4.
    assert m["ece"] == pytest.approx(0.4, abs=1e-6)
    assert m["mce"] == pytest.approx(0.8, abs=1e-6)  # the largest gap, the wrong 0.8
    # Brier: squared distances to the one-hot truth, summed over classes: 0.02, 1.28, 0.18, 0.32.
    assert m["brier"] == pytest.approx((0.02 + 1.28 + 0.18 + 0.32) / 4)
    assert m["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.2) + math.log(0.7) + math.log(0.6)) / 4)
    # AURC: ranked 0.9 (right), 0.8 (wrong), 0.7, 0.6: error rates 0/1, 1/2, 1/3, 1/4, averaged.
    assert m["aurc"] == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert m["n"] == 4


def test_a_perfectly_ranked_model_has_the_lowest_aurc():
    # The wrong image is the least confident: error rates 0, 0, 0, 1/4.
    assert aurc([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]], [0, 1, 1, 1]) == pytest.approx(1 / 16)


def test_temperature_is_fitted_on_validation_and_lowers_its_nll():
    rng = np.random.default_rng(0)
    n, c = 400, 4
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), labels] += 1.0
    over = np.exp(4 * logits)  # over-confident: the same ranking, far too sharp
    over /= over.sum(1, keepdims=True)
    t = fit_temperature(over, labels)

    def nll(probs):
        return -np.mean(np.log(probs[np.arange(n), labels]))

    # An independent search: the NLL on a fine grid of temperatures; the fit sits at its minimum.
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 4001))
    best = grid[np.argmin([nll(apply_temperature(over, g)) for g in grid])]
    assert t == pytest.approx(best, rel=0.01) and t > 1
    assert nll(apply_temperature(over, t)) < nll(over)
    # Temperature never changes which class wins.
    assert (apply_temperature(over, t).argmax(1) == over.argmax(1)).all()


def test_the_referral_threshold_is_the_lowest_that_reaches_the_target_on_validation():
    confidence, correct = [0.9, 0.8, 0.7, 0.6], [True, False, True, True]
    # Kept accuracy at each cut: 1/1, 1/2, 2/3, 3/4. For 70 %: the last cut, 0.6, keeps all (3/4 = 75 %).
    r = referral_threshold(confidence, correct, 0.70)
    assert (r["threshold"], r["val_kept_share"], r["val_acc_kept"]) == (0.6, 1.0, 0.75)
    assert referral_threshold(confidence, correct, 0.9)["threshold"] == 0.9  # only the first reaches 90 %
    # Equal confidences are kept or referred together: 0.9 twice (one wrong) never cuts between them.
    tied = referral_threshold([0.9, 0.9, 0.5], [True, False, True], 0.6)
    assert tied["threshold"] == 0.5 and tied["val_acc_kept"] == pytest.approx(2 / 3)
    assert referral_threshold([0.9, 0.9, 0.5], [True, False, True], 0.9)["threshold"] is None


def test_a_threshold_applied_to_other_images():
    out = referral_outcome([0.95, 0.5, 0.7, 0.2], [True, True, False, False], 0.6)
    assert out["referred_share"] == 0.5 and out["acc_kept"] == 0.5  # 0.95 right, 0.7 wrong kept
    everything = referral_outcome([0.95, 0.5], [True, True], None)
    assert everything["referred_share"] == 1.0 and math.isnan(everything["acc_kept"])


@pytest.mark.parametrize("k, n", [(60, 100), (0, 100), (100, 100), (3, 17), (1, 1)])
def test_clopper_pearson_limits_are_scipys_exact_binomial_interval(k, n):
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert proportion_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_the_rumke_example_of_a_hundred_cell_differential():
    # 60 neutrophils of 100 typed cells: roughly 50 % to 70 % (Rumke's table gives 50-70).
    low, high = proportion_interval(60, 100)
    assert 0.49 < low < 0.51 and 0.69 < high < 0.71


def test_the_bootstrap_balanced_accuracy_is_scikit_learns_on_each_resample():
    from sklearn.metrics import balanced_accuracy_score

    from bench.metrics.statistics import bootstrap_balanced_accuracies

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 60)
    predicted = np.where(rng.random(60) < 0.7, labels, rng.integers(0, 4, 60))
    ours = bootstrap_balanced_accuracies(labels, predicted, n_resamples=50, seed=7)
    draws = np.random.default_rng(7).integers(0, 60, size=(50, 60))  # the resamples resample_counts counts
    expected = [balanced_accuracy_score(labels[d], predicted[d]) for d in draws]
    np.testing.assert_allclose(ours, expected)
