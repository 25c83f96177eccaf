"""The SVMs of the SVM protocol (``bench-svm``, :mod:`bench.protocols.svm_features`): kernels,
the cross-validated choice of C (and gamma), and the scores written as predictions.

Classifier
    [``StandardScaler`` (``svm.standardize``) +] ``sklearn.svm.SVC`` with the kernel
    (``rbf``, ``linear``, ``cubic`` = polynomial of degree 3, ``quadratic``, ``poly<d>``;
    polynomial kernels use ``coef0=svm.coef0``: (gamma <x, y> + coef0)^d). The schema's
    default coef0 is 1 (MATLAB's); experiment=acevedo2019_svm sets scikit-learn's defaults,
    as the paper: coef0 0, C 1 (``svm.c_grid=[1.0]``), no standardisation.
    ``C`` from ``svm.c_grid`` (and ``gamma`` from ``svm.gamma_grid`` for non-linear kernels)
    is chosen by stratified ``svm.cv_folds``-fold cross-validation on the training split
    (accuracy; ties: the first grid point), every fold's accuracy of the chosen point is
    recorded (``metrics.json`` ``svm.cv_fold_accuracy``; the whole grid in ``cv.csv``). The
    chosen SVM is refitted on the whole training split and evaluated once on validation and
    test. The leaderboard ranks by validation accuracy, as for trained models.

Scores in predictions_*.csv
    ``svm.probability=false`` (default): ``prob_<class>`` is the softmax of SVC's
    one-vs-rest decision function (votes plus a bounded confidence term): a monotone score,
    not a calibrated probability, and no extra fits. ``svm.probability=true``: Platt-scaled
    probabilities (``CalibratedClassifierCV(method="sigmoid", ensemble=False)``, what
    ``SVC(probability=True)`` did: 5 more internal fits, only for the final SVM). Either
    way ``predicted`` is the argmax of those scores (equal to ``SVC.predict`` except, with
    the softmax, where one-vs-one votes tie: the confidence term breaks the tie), and the
    metrics are computed from ``predicted``.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Optional

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from bench.protocols.cnn_features import Features

log = logging.getLogger("bench.svm")

_SCALE_WORDS = ("scale", "auto")


# --------------------------------------------------------------------------- kernels
def parse_kernel(name: str) -> dict:
    """SVC keyword arguments for a kernel name: rbf, linear, sigmoid, cubic, quadratic, poly<d>."""
    key = str(name).strip().lower()
    named = {"rbf": {"kernel": "rbf"}, "linear": {"kernel": "linear"}, "sigmoid": {"kernel": "sigmoid"},
             "cubic": {"kernel": "poly", "degree": 3}, "quadratic": {"kernel": "poly", "degree": 2}}
    if key in named:
        return dict(named[key])
    m = re.fullmatch(r"poly(\d+)", key)
    if m and int(m.group(1)) >= 1:
        return {"kernel": "poly", "degree": int(m.group(1))}
    raise ValueError(f"svm.kernels: unknown kernel {name!r}; use rbf, linear, sigmoid, cubic, quadratic or poly<d>")


def _gamma(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in _SCALE_WORDS:
        return value.strip().lower()
    return float(value)


# --------------------------------------------------------------------------- the SVM
def _pipeline(kernel: dict, scfg, seed: int, *, params: Optional[dict] = None, probability: bool = False):
    """[StandardScaler ->] SVC; with ``probability`` the SVC is Platt-scaled by
    ``CalibratedClassifierCV(method="sigmoid", ensemble=False)`` (what SVC(probability=True)
    did, and what scikit-learn >= 1.9 asks for instead of it)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    extra = {"coef0": float(scfg.coef0)} if kernel["kernel"] in ("poly", "sigmoid") else {}
    svc = SVC(**kernel, **extra, **(params or {}), decision_function_shape="ovr", random_state=seed,
              cache_size=1000)
    if probability:
        svc = CalibratedClassifierCV(svc, method="sigmoid", cv=5, ensemble=False)
    steps = ([("scale", StandardScaler())] if scfg.standardize else []) + [("svc", svc)]
    return Pipeline(steps)


def _n_support(pipe) -> int:
    svc = pipe.named_steps["svc"]
    if hasattr(svc, "calibrated_classifiers_"):
        svc = svc.calibrated_classifiers_[0].estimator
    return int(np.sum(svc.n_support_))


def class_scores(pipe, X: np.ndarray, num_classes: int, probability: bool) -> np.ndarray:
    """(N, num_classes) scores: Platt probabilities or the softmax of the decision function."""
    classes = np.asarray(pipe.classes_, dtype=int)
    if probability:
        part = pipe.predict_proba(X)
    else:
        d = np.asarray(pipe.decision_function(X), dtype=np.float64)
        if d.ndim == 1:  # two classes: one signed distance, positive = classes[1]
            d = np.stack([-d, d], axis=1)
        d = d - d.max(axis=1, keepdims=True)
        part = np.exp(d)
        part /= part.sum(axis=1, keepdims=True)
    full = np.zeros((len(X), num_classes))
    full[:, classes] = part
    return full


def fit_svm(cfg: DictConfig, kernel_name: str, feats: dict[str, Features], class_names: list[str]) -> dict:
    """Cross-validate on train, refit, score val and test. Returns results for the run folder."""
    scfg, seed = cfg.svm, int(cfg.seed)
    kernel = parse_kernel(kernel_name)
    X, y, groups = _fit_set(feats)
    folds = int(scfg.cv_folds)
    _check_folds(folds, y[: len(feats["train"].y)], class_names)
    balanced = "extra" in feats
    announce_fits(kernel_name, kernel, scfg, seed, X, y, folds)
    search, cv_time = _grid_search(kernel, scfg, seed, X, y, groups if balanced else None, folds, balanced,
                                   desc=f"svm-{kernel_name} fits" if cfg.trainer.progress else None)
    res, best = search.cv_results_, int(search.best_index_)
    chosen = {k.removeprefix("svc__"): v for k, v in res["params"][best].items()}
    fold_acc = [float(res[f"split{k}_test_score"][best]) for k in range(folds)]

    final = _pipeline(kernel, scfg, seed, params=chosen, probability=bool(scfg.probability))
    start = time.perf_counter()
    final.fit(X, y)
    fit_time = time.perf_counter() - start
    scored = {split: _score(final, feats[split], len(class_names), bool(scfg.probability)) for split in ("val", "test")}
    return {
        "pipeline": final, "scored": scored, "cv_table": _cv_table(res, best, folds),
        "summary": {
            "kernel": kernel_name, "sklearn_kernel": kernel, "coef0": float(scfg.coef0)
            if kernel["kernel"] in ("poly", "sigmoid") else None,
            "selected": chosen, "cv_folds": folds, "cv_grouped_by_source": balanced,
            "cv_fold_accuracy": fold_acc, "cv_mean_accuracy": float(np.mean(fold_acc)),
            "cv_std_accuracy": float(np.std(fold_acc, ddof=1)) if folds > 1 else None,
            "cv_time_s": cv_time, "fit_time_s": fit_time,
            "n_support": _n_support(final), "feature_dim": int(X.shape[1]),
            "n_fit": int(len(y)),
            "n_fit_per_class": {c: int(n) for c, n in zip(class_names, np.bincount(y, minlength=len(class_names)))},
            "balance_to": int(scfg.balance_to) if scfg.balance_to else None,
            "standardize": bool(scfg.standardize),
            "scores": "platt_probability" if scfg.probability else "softmax_of_ovr_decision_function",
        },
    }


def _fit_set(feats: dict[str, Features]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training features plus the augmented extra ones (svm.balance_to); groups = the source image,
    so an original and its augmented copies never sit on both sides of a CV fold."""
    X, y = feats["train"].X, feats["train"].y
    groups = np.arange(len(y))
    if "extra" in feats and len(feats["extra"].y):
        X = np.concatenate([X, feats["extra"].X])
        y = np.concatenate([y, feats["extra"].y])
        groups = np.concatenate([groups, feats["extra"].source])
    return X, y, groups


def _check_folds(folds: int, y_train: np.ndarray, class_names: list[str]) -> None:
    counts = np.bincount(y_train, minlength=len(class_names))
    present = counts[counts > 0]
    if folds < 2 or present.min() < folds:
        worst = class_names[int(np.flatnonzero(counts == present.min())[0])]
        raise ValueError(f"svm.cv_folds={folds} needs >= 2 folds and at least that many training images per "
                         f"class; class {worst!r} has {present.min()}. Lower svm.cv_folds.")


def _grid(kernel: dict, scfg) -> dict[str, list]:
    grid: dict[str, list] = {"svc__C": [float(c) for c in scfg.c_grid]}
    if kernel["kernel"] != "linear":
        grid["svc__gamma"] = [_gamma(g) for g in scfg.gamma_grid]
    return grid


def _grid_search(kernel: dict, scfg, seed: int, X, y, groups, folds: int, balanced: bool,
                 desc: Optional[str] = None):
    """GridSearchCV over C (and gamma), accuracy, stratified folds (grouped by source when balanced).
    ``desc``: a progress bar over the fits (each fold of each grid point), advanced by the scorer,
    which runs in this process when svm.n_jobs=1."""
    from sklearn.metrics import accuracy_score
    from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold, StratifiedKFold

    from bench.protocols.cnn_features import image_bar

    cv = (StratifiedGroupKFold if balanced else StratifiedKFold)(n_splits=folds, shuffle=True, random_state=seed)
    grid = _grid(kernel, scfg)
    n_fits = folds * int(np.prod([len(v) for v in grid.values()]))
    with image_bar(desc if int(scfg.n_jobs) == 1 else None, n_fits, unit="fit") as bar:
        def scorer(estimator, X_fold, y_fold) -> float:  # accuracy, as scoring="accuracy"
            bar.update(1)
            return float(accuracy_score(y_fold, estimator.predict(X_fold)))

        search = GridSearchCV(_pipeline(kernel, scfg, seed), grid, scoring=scorer, cv=cv,
                              n_jobs=int(scfg.n_jobs), refit=False, error_score="raise")
        start = time.perf_counter()
        search.fit(X, y, groups=groups)
    return search, time.perf_counter() - start


# A fit on this many rows, then on twice as many, gives the growth the estimate extrapolates with.
ESTIMATE_ROWS = 500


def estimate_fit_seconds(kernel: dict, scfg, seed: int, X: np.ndarray, y: np.ndarray, n_rows: int,
                         rows: Optional[int] = None) -> Optional[float]:
    """Seconds one SVM fit on ``n_rows`` rows of ``X`` would take here, extrapolated from timed fits
    on ``rows`` and ``2 rows`` random rows (a kernel SVM's cost grows between n^1 and n^3 with the
    rows; the two fits measure the exponent); None when ``X`` is too small to bother (< 4 rows)."""
    rows = rows or ESTIMATE_ROWS
    if len(y) < 4 * rows:
        return None
    pick = np.random.default_rng(seed).permutation(len(y))
    times = []
    for m in (rows, 2 * rows):
        sub = pick[:m]
        start = time.perf_counter()
        _pipeline(kernel, scfg, seed).fit(X[sub], y[sub])
        times.append(max(time.perf_counter() - start, 1e-6))
    exponent = float(np.clip(np.log2(times[1] / times[0]), 1.0, 3.0))
    return times[1] * (n_rows / (2 * rows)) ** exponent


def announce_fits(kernel_name: str, kernel: dict, scfg, seed: int, X: np.ndarray, y: np.ndarray, folds: int) -> None:
    """Before the fits: their sizes, how many, and the time they should take (timed small fits), with
    the options that shorten it."""
    from bench.training.progress import duration_text

    n_points = int(np.prod([len(v) for v in _grid(kernel, scfg).values()]))
    n_fits = folds * n_points
    per_fold = estimate_fit_seconds(kernel, scfg, seed, X, y, len(y) * (folds - 1) // folds)
    whole = estimate_fit_seconds(kernel, scfg, seed, X, y, len(y)) if per_fold is not None else None
    eta = (f"about {duration_text(n_fits * per_fold + whole)} on this machine (timed fits of {ESTIMATE_ROWS} and "
           f"{2 * ESTIMATE_ROWS} rows)" if per_fold is not None else "seconds (a small set)")
    shorter = "svm.balance_to=null (the training split as it is), " if scfg.balance_to else ""
    log.info("svm-%s: %d rows x %d features, %d classes; %d fold(s) x %d grid point(s) = %d fits + 1 refit: %s. "
             "Shorter: %ssvm.cv_folds=3, a smaller svm.c_grid, or svm.n_jobs=N for the folds in parallel.",
             kernel_name, len(y), X.shape[1], len(np.unique(y)), folds, n_points, n_fits, eta, shorter)


def _score(pipe, f: Features, num_classes: int, probability: bool) -> dict:
    start = time.perf_counter()
    probs = class_scores(pipe, f.X, num_classes, probability) if len(f.y) else np.zeros((0, num_classes))
    return {"labels": f.y, "preds": probs.argmax(1) if len(probs) else np.zeros(0, int), "probs": probs,
            "seconds": time.perf_counter() - start}


def _cv_table(res: dict, best: int, folds: int) -> pd.DataFrame:
    """cv.csv: every grid point's mean, std and per-fold accuracy, its rank, and the one selected."""
    rows = []
    for i, params in enumerate(res["params"]):
        row = {k.removeprefix("svc__"): v for k, v in params.items()}
        row.update({"mean_accuracy": res["mean_test_score"][i], "std_accuracy": res["std_test_score"][i]})
        row.update({f"fold{k + 1}": res[f"split{k}_test_score"][i] for k in range(folds)})
        row.update({"rank": int(res["rank_test_score"][i]), "selected": i == best})
        rows.append(row)
    return pd.DataFrame(rows)
