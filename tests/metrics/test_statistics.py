"""bench.metrics.statistics against direct computations on hand-made predictions: McNemar, the
bootstrap, the Pareto front, mean and sd, Holm's correction by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from bench.metrics import statistics as stats


# --------------------------------------------------------------------------- McNemar
def test_identical_models_give_p_one():
    y = np.array([1, 0, 1, 1, 0, 1, 0, 0, 1, 1], dtype=bool)
    result = stats.mcnemar_exact(y, y.copy())
    assert result.pvalue == 1.0
    assert (result.only_a, result.only_b, result.discordant) == (0, 0, 0)
    assert not result.significant()


def test_right_everywhere_the_other_is_wrong_gives_a_tiny_p():
    n = 20
    a, b = np.ones(n, bool), np.zeros(n, bool)
    result = stats.mcnemar_exact(a, b)
    assert (result.only_a, result.only_b) == (n, 0)
    assert result.pvalue == pytest.approx(2 * 0.5 ** n, rel=1e-12)  # two-sided exact binomial tail
    assert result.pvalue < 1e-5 and result.significant(0.05)


def test_known_discordant_counts_match_the_binomial_formula():
    # 7 images only A gets right, 2 only B, plus concordant images that must not matter.
    a = np.array([1] * 7 + [0] * 2 + [1] * 30 + [0] * 5, dtype=bool)
    b = np.array([0] * 7 + [1] * 2 + [1] * 30 + [0] * 5, dtype=bool)
    result = stats.mcnemar_exact(a, b)
    assert (result.only_a, result.only_b) == (7, 2)
    direct = 2 * sum(math.comb(9, k) for k in range(3)) / 2 ** 9  # P(X <= 2) + P(X >= 7), X ~ Bin(9, 1/2)
    assert result.pvalue == pytest.approx(direct, rel=1e-12)
    assert result.pvalue == pytest.approx(sps.binomtest(7, 9, 0.5).pvalue, rel=1e-12)
    assert not result.significant(0.05)
    # Concordant images change nothing; swapping the models swaps the counts only.
    assert stats.mcnemar_exact(a[:9], b[:9]).pvalue == result.pvalue
    swapped = stats.mcnemar_exact(b, a)
    assert (swapped.only_a, swapped.only_b, swapped.pvalue) == (2, 7, result.pvalue)


def test_balanced_disagreement_is_p_one():
    a = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
    assert stats.mcnemar_exact(a, ~a).pvalue == pytest.approx(1.0)


def test_mcnemar_rejects_mismatched_inputs():
    with pytest.raises(ValueError):
        stats.mcnemar_exact(np.ones(3, bool), np.ones(4, bool))


# --------------------------------------------------------------------------- bootstrap
def _direct_ci(correct, n_resamples, seed, confidence=0.95):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(correct), size=(n_resamples, len(correct)))
    accs = np.asarray(correct, float)[idx].mean(axis=1)
    tail = (1 - confidence) / 2
    return np.quantile(accs, [tail, 1 - tail])


def test_bootstrap_ci_matches_a_direct_resample():
    rng = np.random.default_rng(123)
    correct = rng.random(300) < 0.9
    ci = stats.bootstrap_accuracy_ci(correct, n_resamples=1000, seed=7)
    np.testing.assert_array_equal(ci, _direct_ci(correct, 1000, 7))
    assert ci[0] <= correct.mean() <= ci[1]
    # 90% interval from the same draws is nested inside the 95% one.
    ci90 = stats.bootstrap_accuracy_ci(correct, n_resamples=1000, seed=7, confidence=0.90)
    assert ci[0] <= ci90[0] <= ci90[1] <= ci[1]


def test_bootstrap_is_seeded_and_deterministic():
    correct = np.arange(200) % 7 != 0
    first = stats.bootstrap_accuracy_ci(correct, seed=3)
    np.testing.assert_array_equal(first, stats.bootstrap_accuracy_ci(correct, seed=3))
    assert not np.array_equal(first, stats.bootstrap_accuracy_ci(correct, seed=4))


def test_bootstrap_many_models_equals_one_at_a_time():
    rng = np.random.default_rng(0)
    mat = rng.random((5, 150)) < np.linspace(0.5, 0.95, 5)[:, None]
    many = stats.bootstrap_accuracy_ci(mat, n_resamples=500, seed=1)
    assert many.shape == (5, 2)
    for row, ci in zip(mat, many):
        np.testing.assert_array_equal(ci, _direct_ci(row, 500, 1))


def test_bootstrap_agrees_with_scipy_and_the_normal_approximation():
    correct = (np.arange(2051) % 50) != 0  # 98% accurate, PBC-sized test set
    ci = stats.bootstrap_accuracy_ci(correct)
    kwargs = dict(n_resamples=2000, confidence_level=0.95, method="percentile")
    try:  # scipy >= 1.15 names the generator rng; older releases random_state
        ref = sps.bootstrap((correct.astype(float),), np.mean, rng=np.random.default_rng(0), **kwargs)
    except TypeError:
        ref = sps.bootstrap((correct.astype(float),), np.mean, random_state=np.random.default_rng(0), **kwargs)
    ref = ref.confidence_interval
    assert ci[0] == pytest.approx(ref.low, abs=0.002) and ci[1] == pytest.approx(ref.high, abs=0.002)
    p = correct.mean()
    half = 1.96 * math.sqrt(p * (1 - p) / len(correct))
    assert (ci[1] - ci[0]) == pytest.approx(2 * half, rel=0.15)


def test_bootstrap_degenerate_and_bad_inputs():
    np.testing.assert_array_equal(stats.bootstrap_accuracy_ci(np.ones(10, bool)), [1.0, 1.0])
    np.testing.assert_array_equal(stats.bootstrap_accuracy_ci(np.zeros(10, bool)), [0.0, 0.0])
    with pytest.raises(ValueError):
        stats.bootstrap_accuracy_ci(np.array([], bool))
    with pytest.raises(ValueError):
        stats.bootstrap_accuracy_ci(np.ones(5, bool), confidence=1.5)
    with pytest.raises(ValueError):
        stats.bootstrap_accuracy_ci(np.array([0, 2, 1]))


def test_resample_counts_sum_to_n():
    counts = stats.resample_counts(37, n_resamples=11, seed=5)
    assert counts.shape == (11, 37) and (counts.sum(axis=1) == 37).all()


# --------------------------------------------------------------------------- summaries
@pytest.mark.known_answer
def test_pareto_front_known_answer():
    cost = [1.0, 2.0, 2.0, 3.0, 4.0, np.nan, 0.5]
    score = [0.80, 0.90, 0.85, 0.90, 0.95, 0.99, 0.70]
    # 2.0/0.85 is dominated by 2.0/0.90; 3.0/0.90 by 2.0/0.90; NaN never on the front.
    assert stats.pareto_front(cost, score).tolist() == [True, True, False, False, True, False, True]
    # Exact duplicates dominate neither: both stay.
    assert stats.pareto_front([1, 1], [0.5, 0.5]).tolist() == [True, True]


def test_mean_std():
    assert stats.mean_std([0.9, 0.92, 0.94]) == pytest.approx((0.92, 0.02))
    mean, std = stats.mean_std([0.9])
    assert mean == 0.9 and math.isnan(std)
    assert all(math.isnan(v) for v in stats.mean_std([]))


@pytest.mark.fidelity
@pytest.mark.known_answer
def test_holm_adjusted_p_values_by_hand():
    from bench.metrics.statistics import holm

    # Sorted 0.01, 0.03, 0.04 times 3, 2, 1 = 0.03, 0.06, 0.04; running maximum 0.03, 0.06, 0.06.
    got = holm([0.04, 0.01, np.nan, 0.03])
    np.testing.assert_allclose(got[[0, 1, 3]], [0.06, 0.03, 0.06])
    assert np.isnan(got[2])
    # 0.5 x 2 = 1.0; 0.9 x 1 = 0.9, but the running maximum keeps 1.0 (a larger raw p never
    # gets a smaller adjusted one).
    assert holm([0.5, 0.9]).tolist() == [1.0, 1.0]
