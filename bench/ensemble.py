"""Ensembles of trained runs, from their saved per-image predictions (no model is run again).

``bench-ensemble results/<experiment> k=4 method=majority`` reads the completed runs
of an experiment, picks members **on validation data only**, combines their saved
predictions per image and writes, next to ``runs/``::

    ensembles/<name>/                name defaults to "<method>-k<k>" (greedy: "greedy")
        metrics.json                 classes, val and test metric sets (bench.metrics),
                                     method, k, members with their scores, selection details
        predictions_val.csv          path, label, predicted, prob_<class>... (+ votes_<class>
        predictions_test.csv         for hard voting), rows sorted by path
        confusion_val.csv            labelled confusion matrices (rows: true, cols: predicted)
        confusion_test.csv
        members.csv                  rank, member, model, seed, val_acc, test_acc, weight,
                                     count, run_dir, checkpoint (relative to the experiment)

and appends (or replaces, by name) a row of kind ``ensemble`` with a ``members``
column to ``leaderboard.csv``; :func:`bench.leaderboard.write_leaderboard`, called
after every training run, carries such rows over.

Methods (scikit-learn style estimators, see :class:`MajorityVote` and friends)
-----------------------------------------------------------------------------
``majority``     hard vote of the top k members (:class:`MajorityVote`)
``soft``         mean probability of the top k members (:class:`SoftVote`)
``weighted``     weighted mean probability (or weighted vote) of the top k; weights are
                 the members' validation accuracies unless given (:class:`WeightedVote`)
``greedy``       forward selection with replacement on validation, Caruana et al. 2004
                 (:class:`GreedySelection`)
``best_subset``  exhaustive search over the size-k subsets of the top N by validation
                 accuracy (:class:`BestSubset`)

The estimators take a stack of probabilities ``X`` of shape (members, images, classes)
and integer labels ``y``: ``fit(X_val, y_val)`` chooses members, ``predict(X)`` combines.

Tie rules (all deterministic)
-----------------------------
*Rank.* Candidates are ranked by validation accuracy, descending; equal accuracies
keep the order in which the candidates were given. :func:`load_candidates` gives them
in leaderboard order (validation accuracy, then model name, then seed), so remaining
ties fall to model name, then seed.

*Member selection (top k).* Candidates strictly better than the k-th on validation
accuracy are taken. If more candidates tie with the k-th than places are left, every
way of filling the places from the tied ones is tried and the one giving the highest
*ensemble* validation accuracy (with the method's own combination rule) is taken; if
several give the same accuracy, the first in rank order wins (combinations are tried
in lexicographic rank order). Beyond 10,000 such combinations the places are filled
greedily instead (one at a time, each time the tied candidate that maximises ensemble
validation accuracy, first in rank order on ties); the selection details say which.

*Votes (hard voting).* Each member votes for its most probable class. Among the
classes with the most votes (weighted votes for a weighted vote), the one with the
largest sum of the members' probabilities (weighted sum) wins; if still tied, the
class voted for by the best-ranked member among those voting for a tied class; finally
the lowest class index. Scores equal within 1e-9 count as tied.

*Soft voting.* The class with the largest mean (weighted) probability; ties: more
(weighted) votes, then the best-ranked member's vote, then the lowest class index.

*Greedy.* Each step adds (with replacement) the candidate that maximises ensemble
validation accuracy, the best-ranked on ties; the first step therefore takes the best
single member. The ensemble kept is the one after the step with the highest validation
accuracy (the earliest such step), so it is never worse on validation than the best
single member.

*Best subset.* The pool is the top ``top_n`` by rank; subsets are tried in
lexicographic rank order and the first with the highest validation accuracy wins.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.metaestimators import available_if

from bench import leaderboard as lb
from bench import runs
from bench.metrics import classification_metrics

log = logging.getLogger(__name__)

SPLITS = ("val", "test")
ENSEMBLES_DIR = "ensembles"
MEMBERS_CSV = "members.csv"
TIE_TOL = 1e-9  # scores (votes, probability sums) equal within this count as tied
ACC_TOL = 1e-12  # accuracies are fractions with one denominator: equal means equal
MAX_TIE_SUBSETS = 10_000  # beyond this, places tied at the k-th are filled greedily
HARD, SOFT = "hard", "soft"


# =========================================================================== combining
@dataclass
class Combined:
    """The result of combining members: predicted class, (weighted) votes, mean probabilities."""

    pred: np.ndarray  # (N,) int
    votes: np.ndarray  # (N, C) float: (weighted) number of members voting for each class
    proba: np.ndarray  # (N, C) float: (weighted) mean of the members' probabilities


def _resolve(keys: Sequence[np.ndarray], member_votes: np.ndarray) -> np.ndarray:
    """Per row, the class that maximises ``keys[0]``, then ``keys[1]``, ... (equal within
    TIE_TOL = tied), then the class voted by the best-ranked member (row order of
    ``member_votes``, shape (M, N)) among the tied ones, then the lowest index."""
    first = keys[0]
    cand = first >= first.max(axis=1, keepdims=True) - TIE_TOL
    pred = cand.argmax(axis=1)
    rows = np.flatnonzero(cand.sum(axis=1) > 1)  # only rows with a tie need the other rules
    if not len(rows):
        return pred
    cand = cand[rows]
    for key in keys[1:]:
        masked = np.where(cand, key[rows], -np.inf)
        cand &= masked >= masked.max(axis=1, keepdims=True) - TIE_TOL
    local = np.arange(len(rows))
    multi = cand.sum(axis=1) > 1
    for votes in member_votes:
        if not multi.any():
            break
        v = votes[rows]
        hit = multi & cand[local, v]
        if hit.any():
            cand[hit] = False
            cand[hit, v[hit]] = True
            multi &= ~hit
    pred[rows] = cand.argmax(axis=1)  # first True = lowest index among what is left
    return pred


def combine(probs: np.ndarray, weights: Sequence[float] | None = None, voting: str = HARD) -> Combined:
    """Combine members' probabilities ``probs`` (M, N, C), members in rank order (best first).

    ``voting="hard"``: (weighted) majority vote of the members' argmax classes;
    ``voting="soft"``: largest (weighted) mean probability. Ties as in the module
    docstring. ``weights`` (M,) default to 1; members with weight 0 do not count.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 3:
        raise ValueError(f"probs must have shape (members, images, classes), got {probs.shape}")
    m, n, c = probs.shape
    if m == 0:
        raise ValueError("cannot combine an empty set of members")
    w = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (m,) or not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be {m} finite non-negative numbers with a positive sum, got {w.tolist()}")
    if voting not in (HARD, SOFT):
        raise ValueError(f"voting must be 'hard' or 'soft', got {voting!r}")
    active = w > 0
    probs, w = probs[active], w[active]
    member_votes = probs.argmax(axis=2)  # (M, N)
    votes = np.zeros((n, c))
    rows = np.arange(n)
    for mv, wm in zip(member_votes, w):
        votes[rows, mv] += wm
    prob_sum = np.tensordot(w, probs, axes=1)  # (N, C)
    proba = prob_sum / w.sum()
    keys = (votes, prob_sum) if voting == HARD else (proba, votes)
    return Combined(_resolve(keys, member_votes), votes, proba)


def _accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return float((pred == y).mean()) if len(y) else 0.0


# =========================================================================== estimators
def _check_stack(X, y=None) -> tuple[np.ndarray, np.ndarray | None]:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 3:
        raise ValueError(f"X must be probabilities of shape (members, images, classes), got shape {X.shape}")
    if y is not None:
        y = np.asarray(y)
        if y.shape != (X.shape[1],):
            raise ValueError(f"y must have one label per image ({X.shape[1]}), got shape {y.shape}")
        if len(y) and (y.min() < 0 or y.max() >= X.shape[2]):
            raise ValueError(f"labels must be class indices in 0..{X.shape[2] - 1}")
        y = y.astype(int)
    return X, y


class _Ensemble(ClassifierMixin, BaseEstimator):
    """Common machinery. Subclasses set ``_voting`` (or a ``voting`` parameter) and ``_select``.

    ``members``: ids of the candidates, one per row of the ``X`` passed to ``fit`` and
    ``predict`` (None: "0", "1", ...). Their order is the rank tie-break.

    Fitted attributes: ``candidates_`` (ids), ``candidate_val_acc_`` (each candidate's
    validation accuracy), ``ranking_`` (candidate indices, best first),
    ``member_indices_`` (chosen candidates in rank order), ``members_`` (their ids),
    ``weights_`` (one per member), ``val_accuracy_`` (the ensemble's), ``selection_``
    (how the members were chosen), ``classes_`` (0..C-1).
    """

    def _get_voting(self) -> str:
        voting = getattr(self, "voting", getattr(self, "_voting", HARD))
        if voting not in (HARD, SOFT):
            raise ValueError(f"voting must be 'hard' or 'soft', got {voting!r}")
        return voting

    # ---- fitting
    def fit(self, X, y):
        """Choose members on validation data: ``X`` (candidates, images, classes), ``y`` (images,)."""
        X, y = _check_stack(X, y)
        m = X.shape[0]
        ids = [str(i) for i in range(m)] if self.members is None else [str(i) for i in self.members]
        if len(ids) != m:
            raise ValueError(f"{len(ids)} member ids were given but X has {m} candidates")
        if len(set(ids)) != len(ids):
            raise ValueError("member ids must be unique")
        acc = (X.argmax(axis=2) == y[None, :]).mean(axis=1) if X.shape[1] else np.zeros(m)
        order = sorted(range(m), key=lambda i: (-round(float(acc[i]), 12), i))  # stable: given order breaks ties
        self.candidates_ = ids
        self.candidate_val_acc_ = acc
        self.ranking_ = np.array(order, dtype=int)
        self.classes_ = np.arange(X.shape[2])
        indices, weights, selection = self._select(X, y)
        rank_pos = {c: r for r, c in enumerate(order)}
        pairs = sorted(zip(indices, weights), key=lambda p: rank_pos[p[0]])
        self.member_indices_ = np.array([p[0] for p in pairs], dtype=int)
        self.weights_ = np.array([p[1] for p in pairs], dtype=float)
        self.members_ = [ids[i] for i in self.member_indices_]
        self.selection_ = selection
        self.val_accuracy_ = _accuracy(self._combine_idx(X, self.member_indices_, self.weights_).pred, y)
        return self

    def _select(self, X, y) -> tuple[list[int], list[float], dict]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _weights_for(self, indices: Sequence[int]) -> np.ndarray:
        return np.ones(len(indices))

    def _combine_idx(self, X, indices, weights) -> Combined:
        rank_pos = {c: r for r, c in enumerate(self.ranking_)}
        ordered = sorted(range(len(indices)), key=lambda j: rank_pos[indices[j]])
        idx = [indices[j] for j in ordered]
        w = np.asarray(weights, dtype=float)[ordered]
        return combine(X[idx], w, self._get_voting())

    def _score_subset(self, X, y, indices) -> float:
        return _accuracy(self._combine_idx(X, list(indices), self._weights_for(indices)).pred, y)

    def _check_k(self, m: int) -> int:
        k = int(self.k)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if k > m:
            raise ValueError(f"k={k} members were asked for but there are only {m} candidates")
        return k

    def _top_k(self, X, y, k: int, pool: Sequence[int] | None = None) -> tuple[list[int], dict]:
        """The top k of ``pool`` (rank order) with the k-th-place tie rule of the module docstring."""
        order = list(self.ranking_ if pool is None else pool)
        acc = self.candidate_val_acc_
        kth = acc[order[k - 1]]
        sure = [i for i in order if acc[i] > kth + ACC_TOL]
        tied = [i for i in order if abs(acc[i] - kth) <= ACC_TOL]
        need = k - len(sure)
        info: dict[str, Any] = {
            "rule": "top k by validation accuracy",
            "kth_val_acc": float(kth),
            "tied_at_kth": [self.candidates_[i] for i in tied],
            "places_for_tied": need,
        }
        if len(tied) == need:
            info["tie_resolution"] = "none needed"
            return sure + tied, info
        n_subsets = math.comb(len(tied), need)
        if n_subsets <= MAX_TIE_SUBSETS:
            best, best_score = None, -1.0
            for combo in itertools.combinations(tied, need):
                score = self._score_subset(X, y, sure + list(combo))
                if score > best_score + ACC_TOL:
                    best, best_score = list(combo), score
            info["tie_resolution"] = "exhaustive: subset of tied candidates maximising ensemble val accuracy"
            info["subsets_evaluated"] = n_subsets
        else:
            best, rest = [], list(tied)
            for _ in range(need):
                scores = [self._score_subset(X, y, sure + best + [c]) for c in rest]
                pick = rest[int(np.argmax(scores))]  # argmax: first (best-ranked) on ties
                best.append(pick)
                rest.remove(pick)
            best_score = self._score_subset(X, y, sure + best)
            info["tie_resolution"] = f"greedy ({n_subsets} subsets exceed {MAX_TIE_SUBSETS})"
        info["chosen_from_tie"] = [self.candidates_[i] for i in best]
        info["ensemble_val_acc"] = float(best_score)
        return sure + best, info

    # ---- predicting
    def _check_fitted_X(self, X) -> np.ndarray:
        if not hasattr(self, "member_indices_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X_val, y_val) first")
        X, _ = _check_stack(X)
        if X.shape[0] != len(self.candidates_):
            raise ValueError(f"X has {X.shape[0]} candidates; fit saw {len(self.candidates_)} (same order expected)")
        return X

    def combine(self, X) -> Combined:
        """Predicted classes, votes and mean probabilities of the chosen members on ``X``."""
        X = self._check_fitted_X(X)
        return combine(X[self.member_indices_], self.weights_, self._get_voting())

    def predict(self, X) -> np.ndarray:
        """Class index per image, by the ensemble's voting rule."""
        return self.combine(X).pred

    def votes(self, X) -> np.ndarray:
        """(Weighted) number of members voting for each class, shape (images, classes)."""
        return self.combine(X).votes

    def _is_soft(self) -> bool:
        return self._get_voting() == SOFT

    @available_if(_is_soft)
    def predict_proba(self, X) -> np.ndarray:
        """(Weighted) mean of the members' probabilities; only for soft voting, where it is
        what ``predict`` maximises (hard voting has ``votes`` instead)."""
        return self.combine(X).proba


class MajorityVote(_Ensemble):
    """Hard (plurality) vote of the top ``k`` candidates by validation accuracy.

    Members: top k by validation accuracy; candidates tied with the k-th are resolved
    by the subset that maximises the ensemble's validation accuracy, then rank order.
    Vote ties: most votes, then largest summed probability of the tied classes over
    all members, then the class voted by the best-ranked member, then lowest index.
    Has no ``predict_proba`` (use ``votes``).
    """

    _voting = HARD

    def __init__(self, members=None, *, k: int = 4):
        self.members = members
        self.k = k

    def _select(self, X, y):
        indices, info = self._top_k(X, y, self._check_k(X.shape[0]))
        return indices, [1.0] * len(indices), info


class SoftVote(MajorityVote):
    """Mean probability of the top ``k`` candidates (member selection as :class:`MajorityVote`).

    Ties in mean probability: more votes, then the best-ranked member's vote, then
    lowest class index.
    """

    _voting = SOFT


class WeightedVote(_Ensemble):
    """Weighted mean probability (``voting="soft"``) or weighted vote (``"hard"``) of the top k.

    ``weights``:
      * None: each member's validation accuracy;
      * a sequence of k non-negative numbers, given to the chosen members in rank order;
      * a mapping ``{member id: weight}``: exactly those members (``k`` is ignored).

    Member-tie and vote-tie rules as :class:`MajorityVote` / :class:`SoftVote`, with
    weighted votes and weighted probability sums.
    """

    def __init__(self, members=None, *, k: int = 4, weights=None, voting: str = SOFT):
        self.members = members
        self.k = k
        self.weights = weights
        self.voting = voting

    def _weights_for(self, indices):
        if self.weights is None:
            return np.array([self.candidate_val_acc_[i] for i in indices], dtype=float)
        if isinstance(self.weights, Mapping):
            return np.array([float(self.weights[self.candidates_[i]]) for i in indices])
        # by rank position among the chosen members
        rank_pos = {c: r for r, c in enumerate(self.ranking_)}
        positions = np.argsort([rank_pos[i] for i in indices], kind="stable")
        w = np.empty(len(indices))
        w[positions] = np.asarray(self.weights, dtype=float)[: len(indices)]
        return w

    def _select(self, X, y):
        if isinstance(self.weights, Mapping):
            unknown = [k for k in self.weights if str(k) not in self.candidates_]
            if unknown:
                raise ValueError(f"weights name unknown members {unknown}; candidates are {self.candidates_}")
            indices = [self.candidates_.index(str(k)) for k in self.weights]
            info = {"rule": "members and weights given"}
        else:
            k = self._check_k(X.shape[0])
            if self.weights is not None and len(self.weights) != k:
                raise ValueError(f"weights has {len(self.weights)} values; k={k} expects one per member in rank order")
            indices, info = self._top_k(X, y, k)
        w = self._weights_for(indices)
        info["weights"] = "validation accuracy" if self.weights is None else "given"
        return indices, list(w), info


class GreedySelection(_Ensemble):
    """Forward selection with replacement on validation (Caruana et al. 2004).

    Starting from an empty ensemble, each of ``max_steps`` steps adds the candidate
    (from the top ``top_n`` by rank; None = all) whose addition gives the highest
    ensemble validation accuracy, the best-ranked on ties. A candidate may be added
    several times; its weight is the number of times. The ensemble kept is the one
    after the earliest step with the highest validation accuracy, so it is never worse
    on validation than the best single candidate (step 1). ``trace_`` lists the steps.
    """

    def __init__(self, members=None, *, max_steps: int = 20, top_n: int | None = None, voting: str = SOFT):
        self.members = members
        self.max_steps = max_steps
        self.top_n = top_n
        self.voting = voting

    def _select(self, X, y):
        if int(self.max_steps) < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")
        pool = list(self.ranking_ if self.top_n is None else self.ranking_[: int(self.top_n)])
        hard = self._get_voting() == HARD
        rank_pos = {c: r for r, c in enumerate(self.ranking_)}
        member_votes = X.argmax(axis=2)  # (M, N)
        n, c_ = X.shape[1:]
        onehot = np.zeros((X.shape[0], n, c_))
        for c in pool:
            onehot[c, np.arange(n), member_votes[c]] = 1.0
        counts = np.zeros(X.shape[0])
        prob_sum, vote_sum = np.zeros((n, c_)), np.zeros((n, c_))
        trace, best_counts, best_score = [], None, -1.0
        for step in range(1, int(self.max_steps) + 1):
            scores = []
            for c in pool:
                # The same keys as combine() with integer weights, built incrementally.
                p, v = prob_sum + X[c], vote_sum + onehot[c]
                trial = counts.copy()
                trial[c] += 1
                order = sorted(np.flatnonzero(trial), key=rank_pos.__getitem__)
                keys = (v, p) if hard else (p / step, v)
                scores.append(_accuracy(_resolve(keys, member_votes[order]), y))
            j = int(np.argmax(scores))  # first maximum = best-ranked on ties
            counts[pool[j]] += 1
            prob_sum += X[pool[j]]
            vote_sum += onehot[pool[j]]
            trace.append({"step": step, "added": self.candidates_[pool[j]], "val_acc": float(scores[j])})
            if scores[j] > best_score + ACC_TOL:
                best_counts, best_score = counts.copy(), scores[j]
        self.trace_ = trace
        idx = np.flatnonzero(best_counts)
        info = {
            "rule": "greedy forward selection with replacement (Caruana et al. 2004)",
            "pool": [self.candidates_[i] for i in pool],
            "steps_kept": int(best_counts.sum()),
            "trace": trace,
        }
        return list(idx), list(best_counts[idx]), info


class BestSubset(_Ensemble):
    """The size-``k`` subset of the top ``top_n`` candidates with the best ensemble
    validation accuracy (exhaustive; C(top_n, k) subsets, lexicographic rank order,
    first maximum wins)."""

    def __init__(self, members=None, *, k: int = 4, top_n: int = 8, voting: str = HARD):
        self.members = members
        self.k = k
        self.top_n = top_n
        self.voting = voting

    def _select(self, X, y):
        k = self._check_k(X.shape[0])
        top_n = max(k, int(self.top_n))
        pool = list(self.ranking_[:top_n])
        best, best_score, n = None, -1.0, 0
        for combo in itertools.combinations(pool, k):
            n += 1
            score = self._score_subset(X, y, combo)
            if score > best_score + ACC_TOL:
                best, best_score = list(combo), score
        info = {"rule": "exhaustive search of size-k subsets of the top N", "top_n": len(pool),
                "pool": [self.candidates_[i] for i in pool], "subsets_evaluated": n}
        return best, [1.0] * k, info


METHODS = {
    "majority": MajorityVote,
    "soft": SoftVote,
    "weighted": WeightedVote,
    "greedy": GreedySelection,
    "best_subset": BestSubset,
}


# =========================================================================== loading runs
class EnsembleError(ValueError):
    """Bad input for an ensemble (too few runs, mismatched predictions): the message says why."""


@dataclass
class SplitPredictions:
    paths: np.ndarray  # (N,) str, sorted
    labels: np.ndarray  # (N,) int
    probs: np.ndarray  # (M, N, C) float64, candidates in rank order


@dataclass
class Candidates:
    """Completed runs of an experiment with their saved predictions, in leaderboard order."""

    exp_dir: Path
    classes: list[str]
    ids: list[str]  # "model/seed<seed>"
    models: list[str]
    seeds: list[int | None]
    run_dirs: list[runs.RunDir]
    metrics: list[dict]
    splits: dict[str, SplitPredictions] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # completed runs left out, with the reason

    def __len__(self) -> int:
        return len(self.ids)


def _classes_of(metrics: dict) -> list[str]:
    classes = metrics.get("classes") or list((metrics.get("val") or {}).get("per_class", {}))
    return [str(c) for c in classes]


def member_id(model: str, seed) -> str:
    return f"{model}/seed{seed}"


def _read_predictions(path: Path, classes: list[str], run_label: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    frame = pd.read_csv(path, dtype={"path": str, "label": str, "predicted": str}, keep_default_na=False)
    prob_cols = [f"prob_{c}" for c in classes]
    missing = [c for c in ("path", "label", "predicted", *prob_cols) if c not in frame.columns]
    if missing:
        raise EnsembleError(f"{path} ({run_label}) lacks the column(s) {missing}; expected path, label, "
                            f"predicted and prob_<class> for the classes {classes}.")
    if frame["path"].duplicated().any():
        dup = frame["path"][frame["path"].duplicated()].iloc[0]
        raise EnsembleError(f"{path} ({run_label}) lists {dup!r} more than once.")
    frame = frame.sort_values("path", kind="mergesort")
    index = {c: i for i, c in enumerate(classes)}
    bad = sorted(set(frame["label"]) - set(index) | set(frame["predicted"]) - set(index))
    if bad:
        raise EnsembleError(f"{path} ({run_label}) has class names {bad} that are not among its classes {classes}.")
    labels = frame["label"].map(index).to_numpy(int)
    predicted = frame["predicted"].map(index).to_numpy(int)
    probs = frame[prob_cols].to_numpy(np.float64)
    # The CSVs round probabilities to 6 decimals; where that makes the recorded prediction
    # tie with another class, nudge it up by one ulp so argmax reproduces the run's own vote.
    rows = np.arange(len(frame))
    off = probs.argmax(axis=1) != predicted
    if off.any():
        top = probs.max(axis=1)
        if (probs[rows[off], predicted[off]] < top[off] - 1e-6).any():
            raise EnsembleError(f"{path} ({run_label}): the 'predicted' column disagrees with the probabilities.")
        probs[rows[off], predicted[off]] = np.nextafter(top[off], np.inf)
    return frame["path"].to_numpy(str), labels, probs


def load_candidates(exp_dir, splits: Sequence[str] = SPLITS) -> Candidates:
    """The completed runs of ``exp_dir`` with their predictions, aligned by path.

    Order: validation accuracy (from metrics.json, as on the leaderboard) descending,
    then model name, then seed. Completed runs without prediction files are skipped
    with a warning; runs whose classes or image sets differ raise :class:`EnsembleError`
    naming both runs.
    """
    exp_dir = Path(exp_dir)
    found = []
    skipped = []
    for run_dir in runs.iter_run_dirs(exp_dir):
        record = lb.read_run(run_dir)
        if record is None or not record.completed:
            continue
        missing = [s for s in splits if not run_dir.predictions(s).exists()]
        if missing:
            skipped.append(f"{member_id(record.model, record.seed)}: no predictions_{missing[0]}.csv")
            log.warning("skipping %s: %s", run_dir.root, skipped[-1])
            continue
        val_acc = float((record.metrics.get("val") or {}).get("accuracy", math.nan))
        found.append((record, run_dir, val_acc))
    found.sort(key=lambda t: (-t[2] if t[2] == t[2] else math.inf, t[0].model,
                              t[0].seed if isinstance(t[0].seed, int) else math.inf))
    cands = Candidates(exp_dir, [], [], [], [], [], [], skipped=skipped)
    if not found:
        return cands
    ref_record, ref_dir, _ = found[0]
    classes = _classes_of(ref_record.metrics)
    cands.classes = classes
    per_split: dict[str, list] = {s: [] for s in splits}
    ref_split: dict[str, tuple] = {}
    for record, run_dir, _ in found:
        rid = member_id(record.model, record.seed)
        if _classes_of(record.metrics) != classes:
            raise EnsembleError(
                f"runs {member_id(ref_record.model, ref_record.seed)} and {rid} have different classes "
                f"({classes} vs {_classes_of(record.metrics)}); members of one ensemble must share the "
                f"class order. Ensemble runs of one experiment only.")
        for split in splits:
            paths, labels, probs = _read_predictions(run_dir.predictions(split), classes, rid)
            if split not in ref_split:
                ref_split[split] = (paths, labels, member_id(ref_record.model, ref_record.seed))
            else:
                _check_aligned(ref_split[split], (paths, labels, rid), split)
            per_split[split].append(probs)
        cands.ids.append(rid)
        cands.models.append(record.model)
        cands.seeds.append(record.seed)
        cands.run_dirs.append(run_dir)
        cands.metrics.append(record.metrics)
    for split in splits:
        paths, labels, _ = ref_split[split]
        cands.splits[split] = SplitPredictions(paths, labels, np.stack(per_split[split]))
    return cands


def _check_aligned(ref: tuple, other: tuple, split: str) -> None:
    ref_paths, ref_labels, ref_id = ref
    paths, labels, rid = other
    if len(paths) == len(ref_paths) and (paths == ref_paths).all():
        if (labels == ref_labels).all():
            return
        i = int(np.flatnonzero(labels != ref_labels)[0])
        raise EnsembleError(
            f"runs {ref_id} and {rid} disagree on the label of {paths[i]!r} in predictions_{split}.csv; "
            "their predictions come from different splits or data and cannot be ensembled.")
    only_ref = sorted(set(ref_paths) - set(paths))[:3]
    only_other = sorted(set(paths) - set(ref_paths))[:3]
    raise EnsembleError(
        f"runs {ref_id} and {rid} have different {split} images in predictions_{split}.csv "
        f"({len(ref_paths)} vs {len(paths)} rows; only in {ref_id}: {only_ref}, only in {rid}: {only_other}). "
        "Members must be evaluated on the same split (same manifest, no trainer.max_batches); "
        "re-run or remove the odd run.")


# =========================================================================== building
def default_name(method: str, k: int | None) -> str:
    return method if method == "greedy" or k is None else f"{method}-k{k}"


def make_estimator(method: str, ids: Sequence[str], *, k: int = 4, top_n: int | None = None,
                   weights=None, voting: str | None = None, steps: int = 20) -> _Ensemble:
    """The estimator for a CLI method name with its options."""
    if method not in METHODS:
        raise EnsembleError(f"method={method!r} is not one of {', '.join(METHODS)}.")
    if method == "majority":
        return MajorityVote(list(ids), k=k)
    if method == "soft":
        return SoftVote(list(ids), k=k)
    if method == "weighted":
        return WeightedVote(list(ids), k=k, weights=weights, voting=voting or SOFT)
    if method == "greedy":
        return GreedySelection(list(ids), max_steps=steps, top_n=top_n, voting=voting or SOFT)
    return BestSubset(list(ids), k=k, top_n=8 if top_n is None else top_n, voting=voting or HARD)


@dataclass
class EnsembleResult:
    name: str
    out_dir: Path
    estimator: _Ensemble
    metrics: dict
    members: pd.DataFrame
    leaderboard_row: dict


def run_ensemble(exp_dir, *, method: str = "majority", k: int = 4, top_n: int | None = None, weights=None,
                 voting: str | None = None, steps: int = 20, name: str | None = None,
                 candidates: Candidates | None = None) -> EnsembleResult:
    """Load the runs, fit on validation, evaluate on val and test, write the folder and the row."""
    exp_dir = Path(exp_dir)
    cands = candidates if candidates is not None else load_candidates(exp_dir)
    needed = 1 if method == "greedy" or isinstance(weights, Mapping) else k
    if len(cands) < needed:
        skipped = f" ({len(cands.skipped)} completed run(s) skipped: {'; '.join(cands.skipped)})" if cands.skipped else ""
        raise EnsembleError(
            f"{exp_dir} has {len(cands)} completed run(s) with predictions{skipped}, fewer than k={k}. "
            f"Train more models (bench-train -m model=...) or ask for k<={len(cands)}.")
    if isinstance(weights, Mapping):
        unknown = [w for w in weights if w not in cands.ids]
        if unknown:
            raise EnsembleError(f"weights name run(s) {unknown} that are not completed runs of {exp_dir}; "
                                f"available: {', '.join(cands.ids)}.")
    est = make_estimator(method, cands.ids, k=k, top_n=top_n, weights=weights, voting=voting, steps=steps)
    val, test = cands.splits["val"], cands.splits["test"]
    try:
        est.fit(val.probs, val.labels)
    except ValueError as exc:
        raise EnsembleError(str(exc)) from exc
    combined = {"val": est.combine(val.probs), "test": est.combine(test.probs)}
    voting = est._get_voting()
    name = name or default_name(method, None if method == "greedy" else (len(weights) if isinstance(weights, Mapping) else k))
    out_dir = exp_dir / ENSEMBLES_DIR / name
    classes = cands.classes

    metric_sets = {s: classification_metrics(cands.splits[s].labels, combined[s].pred, classes) for s in SPLITS}
    member_rows = []
    total_w = float(np.sum(est.weights_))
    for idx, w in zip(est.member_indices_, est.weights_):
        run_dir = cands.run_dirs[idx]
        m = cands.metrics[idx]
        member_rows.append({
            "rank": int(idx) + 1, "member": cands.ids[idx], "model": cands.models[idx], "seed": cands.seeds[idx],
            "val_acc": round(float(est.candidate_val_acc_[idx]), lb.DECIMALS),
            "test_acc": round(float((m.get("test") or {}).get("accuracy", math.nan)), lb.DECIMALS),
            "weight": round(float(w) / total_w, lb.DECIMALS), "count": int(round(w)),
            "run_dir": run_dir.root.relative_to(exp_dir).as_posix(),
            "checkpoint": run_dir.best_ckpt.relative_to(exp_dir).as_posix(),
        })
    members = pd.DataFrame(member_rows)
    if method != "greedy":
        members = members.drop(columns="count")

    metrics = {
        "experiment": exp_dir.name, "kind": lb.KIND_ENSEMBLE, "model": name, "name": name,
        "method": method, "estimator": type(est).__name__, "voting": voting,
        "k": len(est.members_), "status": runs.STATUS_COMPLETED, "classes": classes,
        "members": member_rows, "selection": est.selection_,
        "params": {k_: v for k_, v in est.get_params().items() if k_ != "members"},
        "n_candidates": len(cands), "candidates": [
            {"member": cid, "val_acc": float(a)} for cid, a in zip(cands.ids, est.candidate_val_acc_)],
        "val": metric_sets["val"], "test": metric_sets["test"],
        "params_m": _sum_member(cands, est, "params_m"), "gflops": _sum_member(cands, est, "gflops"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        runs.write_csv_atomic(out_dir / f"predictions_{split}.csv",
                              _predictions_frame(cands.splits[split], combined[split], classes, voting))
        runs.write_csv_atomic(out_dir / f"confusion_{split}.csv",
                              _confusion_frame(metric_sets[split]["confusion_matrix"], classes))
    runs.write_csv_atomic(out_dir / MEMBERS_CSV, members)
    runs.write_json_atomic(out_dir / "metrics.json", metrics)  # last: its presence means complete
    row = append_leaderboard_row(exp_dir, name, metrics, [r["member"] for r in member_rows])
    return EnsembleResult(name, out_dir, est, metrics, members, row)


def _sum_member(cands: Candidates, est: _Ensemble, key: str) -> float | None:
    values = [cands.metrics[i].get(key) for i in est.member_indices_]
    if any(v is None or not isinstance(v, (int, float)) or v != v for v in values):
        return None
    return float(sum(values))


def _predictions_frame(split: SplitPredictions, comb: Combined, classes, voting: str) -> pd.DataFrame:
    frame = pd.DataFrame({
        "path": split.paths,
        "label": [classes[i] for i in split.labels],
        "predicted": [classes[i] for i in comb.pred],
    })
    for j, c in enumerate(classes):
        frame[f"prob_{c}"] = comb.proba[:, j].round(6)
    if voting == HARD:
        votes = comb.votes
        integral = np.allclose(votes, np.round(votes))
        for j, c in enumerate(classes):
            frame[f"votes_{c}"] = np.round(votes[:, j]).astype(int) if integral else votes[:, j].round(6)
    return frame


def _confusion_frame(matrix, classes) -> pd.DataFrame:
    frame = pd.DataFrame(matrix, columns=[f"pred_{c}" for c in classes])
    frame.insert(0, "true", classes)
    return frame


def leaderboard_row(name: str, metrics: dict, member_ids: Sequence[str], columns: Sequence[str]) -> dict:
    """The ensemble's leaderboard row over ``columns`` (+ ``members``)."""
    test = metrics["test"]
    row: dict[str, Any] = {c: math.nan for c in columns}
    row.update({"rank": None, "kind": lb.KIND_ENSEMBLE, "model": name, "seed": None,
                "status": runs.STATUS_COMPLETED, "error": None,
                "val_acc": round(metrics["val"]["accuracy"], lb.DECIMALS),
                "test_acc": round(test["accuracy"], lb.DECIMALS)})
    for cls, scores in test["per_class"].items():
        row[lb.class_column(cls)] = round(scores["accuracy"], lb.DECIMALS)
    for key in lb.MACRO_KEYS:
        row[f"test_{key}"] = round(test["macro"][key], lb.DECIMALS)
    for key in ("params_m", "gflops"):
        if metrics.get(key) is not None:
            row[key] = round(float(metrics[key]), lb.DECIMALS)
    row["members"] = ";".join(member_ids)
    return row


def append_leaderboard_row(exp_dir, name: str, metrics: dict, member_ids: Sequence[str]) -> dict:
    """Add (or replace, by model name) an ensemble row in leaderboard.csv, under the lock.

    The model rows are rebuilt from the run folders (as write_leaderboard does) and
    the other ensemble rows are carried over.
    """
    exp_dir = Path(exp_dir)
    with lb.leaderboard_lock(exp_dir):
        board = lb.build_leaderboard(exp_dir)
        if "members" not in board.columns:
            board["members"] = None
        keep = ~((board["kind"] == lb.KIND_ENSEMBLE) & (board["model"].astype(str) == name))
        board = board[keep]
        row = leaderboard_row(name, metrics, member_ids, [c for c in board.columns if c != "members"])
        new = pd.DataFrame([row])
        extra = [c for c in new.columns if c not in board.columns]
        board = board.reindex(columns=[*board.columns, *extra])
        parts = [p.astype(object) for p in (board, new.reindex(columns=board.columns)) if len(p)]
        board = pd.concat(parts, ignore_index=True)
        runs.write_csv_atomic(exp_dir / lb.LEADERBOARD_CSV, board)
    return row


# =========================================================================== CLI
OPTIONS = {
    "k": "number of members (default 4)",
    "method": f"one of {', '.join(METHODS)} (default majority)",
    "top_n": "pool size: best_subset searches the top N (default 8); greedy selects from the top N (default all)",
    "weights": "weighted: comma-separated numbers for the members in rank order, or "
               "member=weight pairs separated by ';' (e.g. 'resnet18/seed0=2;vgg16/seed0=1')",
    "voting": "hard or soft, for weighted, greedy and best_subset",
    "steps": "greedy: number of forward-selection steps (default 20)",
    "name": "output folder and leaderboard name (default <method>-k<k>, or greedy)",
}


def _parse_weights(text: str):
    text = text.strip()
    if "=" in text:
        out = {}
        for part in filter(None, (p.strip() for p in text.split(";"))):
            key, _, value = part.rpartition("=")
            out[key.strip()] = float(value)
        return out
    return [float(v) for v in text.split(",") if v.strip()]


def parse_overrides(items: Sequence[str]) -> dict:
    """``key=value`` items (Hydra-override style) into typed options; raises EnsembleError."""
    opts: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("+")
        if not sep or key not in OPTIONS:
            raise EnsembleError(
                f"{item!r} is not an option; write key=value with key one of: "
                + "; ".join(f"{k} ({d})" for k, d in OPTIONS.items()) + ".")
        try:
            if key in ("k", "top_n", "steps"):
                opts[key] = None if value.lower() in ("null", "none", "") and key == "top_n" else int(value)
            elif key == "weights":
                opts[key] = None if value.lower() in ("null", "none", "val_acc", "") else _parse_weights(value)
            elif key == "voting":
                if value not in (HARD, SOFT):
                    raise ValueError("voting must be hard or soft")
                opts[key] = value
            else:
                opts[key] = value
        except ValueError as exc:
            raise EnsembleError(f"could not read {item!r}: {exc}.") from exc
    if "name" in opts and (not opts["name"] or "/" in opts["name"] or opts["name"].startswith(".")):
        raise EnsembleError(f"name={opts['name']!r} must be a plain folder name (no '/', not hidden).")
    return opts


def format_members(members: pd.DataFrame) -> str:
    cols = [c for c in ("rank", "member", "val_acc", "test_acc", "weight") if c in members.columns]
    cells = [[str(c) for c in cols]] + [[_fmt(r[c], c) for c in cols] for r in members.to_dict("records")]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) if c == "member" else v.rjust(w) for v, w, c in zip(row, widths, cols)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value, col: str) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if col != "rank" else str(int(value))
    return str(value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench-ensemble",
        description="Ensemble the completed runs of an experiment from their saved predictions: choose "
                    "members on validation, vote per image, report val and test metrics, write "
                    "<exp>/ensembles/<name>/ and a leaderboard row of kind 'ensemble'.",
        epilog="options (key=value): " + "; ".join(f"{k}: {d}" for k, d in OPTIONS.items()),
    )
    parser.add_argument("exp_dir", type=Path, help="experiment folder, e.g. results/<experiment>")
    parser.add_argument("overrides", nargs="*", help="key=value options, e.g. k=4 method=majority")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        opts = parse_overrides(args.overrides)
        if not (args.exp_dir / "runs").is_dir():
            raise EnsembleError(
                f"{args.exp_dir} has no runs/ folder. Pass an experiment folder written by bench-train "
                "(results/<experiment>, containing runs/<model>/seed<seed>/).")
        method = opts.pop("method", "majority")
        k = opts.pop("k", 4)
        result = run_ensemble(args.exp_dir, method=method, k=k, **opts)
    except EnsembleError as exc:
        print(f"bench-ensemble: {exc}", file=sys.stderr)
        return 2
    m = result.metrics
    print(f"{result.name}: {m['estimator']} ({m['voting']} voting), {len(result.members)} member(s) "
          f"chosen on validation from {m['n_candidates']} candidate(s)")
    print(format_members(result.members))
    sel = m["selection"]
    if sel.get("tie_resolution") not in (None, "none needed"):
        print(f"tie at place k (val acc {sel['kth_val_acc']:.4f}) among {', '.join(sel['tied_at_kth'])}: "
              f"took {', '.join(sel['chosen_from_tie'])} ({sel['tie_resolution']})")
    print()
    print(f"{'split':<6}{'accuracy':>10}{'macro_f1':>10}{'macro_sens':>12}{'macro_spec':>12}")
    for split in SPLITS:
        s = m[split]
        print(f"{split:<6}{s['accuracy']:>10.4f}{s['macro']['f1']:>10.4f}"
              f"{s['macro']['sensitivity']:>12.4f}{s['macro']['specificity']:>12.4f}")
    print(f"\nwrote {result.out_dir} and a leaderboard row ({time.perf_counter() - start:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
