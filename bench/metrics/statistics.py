"""Uncertainty for accuracies measured on one test set: pure functions on arrays.

The published tables separate models by one or two test images (on PBC's 2,056 test
images of the paper's split, ``data.split_rounding=ceil``, one image is 0.049 percentage points;
2,050 with the default rounding), so a ranking needs error bars.

Bootstrap confidence interval (:func:`bootstrap_accuracy_ci`)
    Percentile bootstrap with a **seeded numpy resample**: ``n_resamples`` samples of
    the test images drawn with replacement (``numpy.random.default_rng(seed).integers``),
    the accuracy of each, and the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
    quantiles of those accuracies (``numpy.quantile``, linear interpolation). Same seed,
    same interval. Several models evaluated on the same images share one set of
    resamples (a paired bootstrap), computed as one matrix product.

    Written directly rather than with ``scipy.stats.bootstrap`` so that a test can
    reproduce it draw for draw, and so that 30 models cost one matrix product; the
    test suite checks that scipy's percentile interval agrees.

McNemar's exact test (:func:`mcnemar_exact`)
    Two models scored on the same images differ only where exactly one of them is
    right. Under the null hypothesis (equal accuracy) each such discordant image is
    equally likely to favour either model, so the number favouring model A is
    Binomial(b + c, 1/2); the two-sided p-value is ``scipy.stats.binomtest``'s. With no
    discordant image the models are indistinguishable: p = 1.

Pareto front (:func:`pareto_front`)
    Points not dominated by a cheaper-or-equal point with a better-or-equal score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95
DEFAULT_SEED = 0
DEFAULT_ALPHA = 0.05


# --------------------------------------------------------------------------- bootstrap
def _as_correct_matrix(correct) -> np.ndarray:
    arr = np.asarray(correct)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"correct must be (images,) or (models, images), got shape {arr.shape}")
    if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
        raise ValueError("correct must hold booleans or 0/1 (one entry per test image)")
    return arr.astype(np.float64)


def resample_counts(n: int, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """How often each of ``n`` items is drawn in each bootstrap resample, shape (n_resamples, n).

    Row r counts the indices ``numpy.random.default_rng(seed).integers(0, n, (n_resamples, n))[r]``,
    i.e. resample r is the multiset of those indices.
    """
    if n < 1:
        raise ValueError("cannot bootstrap an empty sample")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    flat = idx + n * np.arange(n_resamples)[:, None]
    return np.bincount(flat.ravel(), minlength=n_resamples * n).reshape(n_resamples, n)


def bootstrap_accuracies(correct, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Accuracy of each model in each bootstrap resample, shape (models, n_resamples).

    ``correct``: (images,) or (models, images), True where a model is right. All models
    share the same resamples (paired).
    """
    mat = _as_correct_matrix(correct)
    counts = resample_counts(mat.shape[1], n_resamples, seed).astype(np.float64)
    # counts @ correct.T sums integers exactly in float64: identical to correct[idx].mean(1).
    return (counts @ mat.T).T / mat.shape[1]


def bootstrap_accuracy_ci(
    correct,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> np.ndarray:
    """Percentile bootstrap interval of accuracy: array ``[low, high]`` for a 1-D ``correct``,
    shape (models, 2) for a 2-D one (see the module docstring)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    one = np.asarray(correct).ndim == 1
    accs = bootstrap_accuracies(correct, n_resamples, seed)
    tail = (1 - confidence) / 2
    ci = np.quantile(accs, [tail, 1 - tail], axis=1).T  # (models, 2)
    return ci[0] if one else ci


# --------------------------------------------------------------------------- McNemar
@dataclass(frozen=True)
class McNemarResult:
    """McNemar's exact test of two models on the same images.

    ``only_a``: images only model A gets right (b); ``only_b``: only model B (c).
    """

    only_a: int
    only_b: int
    pvalue: float

    @property
    def discordant(self) -> int:
        return self.only_a + self.only_b

    def significant(self, alpha: float = DEFAULT_ALPHA) -> bool:
        return self.pvalue < alpha


def mcnemar_exact(correct_a, correct_b) -> McNemarResult:
    """Exact (binomial) McNemar test; ``correct_a``/``correct_b`` are per-image booleans
    for the same images in the same order."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"both models need one entry per image, same order; got shapes {a.shape} and {b.shape}")
    only_a = int(np.count_nonzero(a & ~b))
    only_b = int(np.count_nonzero(~a & b))
    n = only_a + only_b
    pvalue = 1.0 if n == 0 else float(binomtest(only_a, n, 0.5, alternative="two-sided").pvalue)
    return McNemarResult(only_a, only_b, min(1.0, pvalue))


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (statsmodels' ``multipletests(method="holm")``); NaNs
    (no test) stay NaN and do not count as tests. Comparing 26 models with the best at 0.05 each
    would call about one of them different by chance alone; the adjusted p-values control the
    chance of any false "differs" at alpha."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    tested = ~np.isnan(p)
    if tested.any():
        out[tested] = multipletests(p[tested], method="holm")[1]
    return out


# --------------------------------------------------------------------------- summaries
def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for fewer than two values), NaNs ignored."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    if not len(arr):
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else float("nan")


def pareto_front(cost, score) -> np.ndarray:
    """Boolean mask of the points on the Pareto front: lower ``cost`` and higher ``score``
    are better; a point is on the front when no other point is at least as good on both
    and strictly better on one. Points with a NaN are never on it."""
    cost = np.asarray(cost, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    if cost.shape != score.shape or cost.ndim != 1:
        raise ValueError("cost and score must be 1-D arrays of the same length")
    valid = ~(np.isnan(cost) | np.isnan(score))
    c, s = cost[:, None], score[:, None]
    dominated = ((cost[None, :] <= c) & (score[None, :] >= s)
                 & ((cost[None, :] < c) | (score[None, :] > s)) & valid[None, :]).any(axis=1)
    return valid & ~dominated


def proportion_interval(k: int, n: int, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a share ``k / n``, statsmodels' ``proportion_confint``
    (method "beta"): the binomial limits haematologists know from Rumke's table for a differential
    count. (NaN, NaN) when ``n`` is 0."""
    from statsmodels.stats.proportion import proportion_confint

    if n <= 0:
        return math.nan, math.nan
    low, high = proportion_confint(int(k), int(n), alpha=1 - confidence, method="beta")
    return float(0.0 if k == 0 else low), float(1.0 if k == n else high)


def bootstrap_balanced_accuracies(labels, predicted, n_resamples: int = DEFAULT_RESAMPLES,
                                  seed: int = DEFAULT_SEED) -> np.ndarray:
    """Balanced accuracy (mean recall over the classes present) in each bootstrap resample of the images,
    shape (n_resamples,); a class absent from a resample has no say in it, as in scikit-learn's."""
    labels, predicted = np.asarray(labels, dtype=int), np.asarray(predicted, dtype=int)
    counts = resample_counts(len(labels), n_resamples, seed).astype(np.float64)  # (R, N)
    onehot = np.eye(int(labels.max()) + 1)[labels]  # (N, C)
    per_class = counts @ onehot  # images of each class drawn
    right = counts @ (onehot * (labels == predicted)[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = right / per_class
    return np.nanmean(np.where(per_class > 0, recall, np.nan), axis=1)


def drop_interval(home: tuple, away: tuple, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                  confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval of a drop in balanced accuracy from one test set to another (each
    ``(labels, predicted)``), the two sets resampled independently (they share no image)."""
    a = bootstrap_balanced_accuracies(*home, n_resamples, seed)
    b = bootstrap_balanced_accuracies(*away, n_resamples, seed + 1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(a - b, [tail, 1 - tail])
    return float(low), float(high)
