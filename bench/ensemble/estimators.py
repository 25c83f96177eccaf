"""Ensemble estimators over saved per-image predictions, scikit-learn style (no model is run again).

``bench-ensemble`` (:mod:`bench.ensemble.folders`) reads the run folders of an experiment and
writes ensemble folders with these estimators; this module only combines probabilities.

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
keep the order in which the candidates were given.
:func:`bench.ensemble.candidates.load_candidates` gives them in leaderboard order (validation
accuracy, then model name, then seed), so remaining ties fall to model name, then seed.

*Member selection (top k).* Candidates strictly better than the k-th on validation
accuracy are taken. If more candidates tie with the k-th than places are left, every
way of filling the places from the tied ones is tried and the one giving the highest
*ensemble* validation accuracy (with the method's own combination rule) is taken; if
several give the same accuracy, the first in rank order wins (combinations are tried
in lexicographic rank order). Beyond 10,000 such combinations the places are filled
greedily instead (one at a time, each time the tied candidate that maximises ensemble
validation accuracy, first in rank order on ties); the selection details say which.

*Votes.* Ties between classes follow :mod:`bench.ensemble.voting` (hard voting: most
(weighted) votes, then the largest summed probability; soft voting: the largest mean
probability, then most votes; then the best-ranked member's vote, then the lowest class index).

*Greedy.* Each step adds (with replacement) the candidate that maximises ensemble
validation accuracy, the best-ranked on ties; the first step therefore takes the best
single member. The ensemble kept is the one after the step with the highest validation
accuracy (the earliest such step), so it is never worse on validation than the best
single member.

*Best subset.* The pool is the top ``top_n`` by rank; subsets are tried in
lexicographic rank order and the first with the highest validation accuracy wins.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Mapping, Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.metaestimators import available_if

from bench.ensemble.voting import HARD, SOFT, Combined, combine, resolve_ties

ACC_TOL = 1e-12  # accuracies are fractions with one denominator: equal means equal
MAX_TIE_SUBSETS = 10_000  # beyond this, places tied at the k-th are filled greedily


def _accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return float((pred == y).mean()) if len(y) else 0.0


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

    def get_voting(self) -> str:
        """``hard`` or ``soft``: how the members' predictions are combined."""
        return self._get_voting()

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
                scores.append(_accuracy(resolve_ties(keys, member_votes[order]), y))
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
