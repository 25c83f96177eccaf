"""Ensemble estimators (bench.ensemble.estimators) on hand-built predictions: member selection and
its ties, invariants, greedy selection, best subsets, weights, scikit-learn conventions, speed."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from bench.ensemble import estimators as ens, voting as vote

from tests.helpers import random_stack


def _probs(correct_rows, y, p_right=0.8, n_classes=2):
    """One member: probability p_right on the true class where correct, else on the next class."""
    out = np.full((len(y), n_classes), (1 - p_right) / (n_classes - 1))
    for i, (ok, label) in enumerate(zip(correct_rows, y)):
        out[i, label if ok else (label + 1) % n_classes] = p_right
    return out


# --------------------------------------------------------------------------- member selection
@pytest.fixture
def tie_stack():
    """k=3: A and B are sure; C, D, E tie for the last place on validation (3/6 each).
    With A and B, C or D give 5/6, E gives 6/6."""
    y = np.zeros(6, dtype=int)
    patterns = {
        "A": [1, 1, 1, 1, 1, 0],
        "B": [1, 1, 0, 0, 1, 1],
        "C": [0, 0, 1, 1, 1, 0],
        "D": [0, 0, 0, 1, 1, 1],
        "E": [0, 0, 1, 1, 0, 1],
    }
    X = np.stack([_probs(p, y) for p in patterns.values()])
    return list(patterns), X, y


@pytest.mark.parametrize("cls", [ens.MajorityVote, ens.SoftVote, ens.WeightedVote])
def test_member_tie_maximises_ensemble_val_accuracy(tie_stack, cls):
    ids, X, y = tie_stack
    est = cls(ids, k=3).fit(X, y)
    assert est.members_ == ["A", "B", "E"]
    assert est.val_accuracy_ == 1.0
    sel = est.selection_
    assert sel["tied_at_kth"] == ["C", "D", "E"] and sel["chosen_from_tie"] == ["E"]
    assert sel["subsets_evaluated"] == 3


def test_member_tie_falls_back_to_rank_order(tie_stack):
    ids, X, y = tie_stack
    keep = [0, 1, 2, 3]  # without E, C and D both give 5/6: the first in the given order wins
    est = ens.MajorityVote([ids[i] for i in keep], k=3).fit(X[keep], y)
    assert est.members_ == ["A", "B", "C"]
    swapped = [0, 1, 3, 2]
    est = ens.MajorityVote([ids[i] for i in swapped], k=3).fit(X[swapped], y)
    assert est.members_ == ["A", "B", "D"]


def test_six_tied_for_last_places_is_exhaustive():
    rng = np.random.default_rng(3)
    n = 60
    y = rng.integers(0, 3, n)
    sure = _probs(np.arange(n) % 10 != 0, y, n_classes=3)  # 54/60
    tied = []
    for _ in range(6):  # each 42/60 correct, errors in different places
        ok = np.ones(n, bool)
        ok[rng.choice(n, 18, replace=False)] = False
        tied.append(_probs(ok, y, n_classes=3))
    X = np.stack([sure, *tied])
    ids = ["best", *(f"t{i}" for i in range(6))]
    est = ens.MajorityVote(ids, k=4).fit(X, y)
    assert est.selection_["subsets_evaluated"] == 20
    assert est.members_[0] == "best"
    scores = {c: ens._accuracy(vote.combine(X[[0, *c]]).pred, y) for c in itertools.combinations(range(1, 7), 3)}
    best = max(scores.values())
    first_best = next(c for c in itertools.combinations(range(1, 7), 3) if scores[c] == best)
    assert est.val_accuracy_ == best
    assert est.members_[1:] == [ids[i] for i in first_best]


def test_no_tie_takes_top_k():
    rng = np.random.default_rng(0)
    X, y = random_stack(rng, 6, 200, 4)
    est = ens.MajorityVote(k=3).fit(X, y)
    acc = (X.argmax(2) == y).mean(1)
    assert sorted(est.member_indices_) == sorted(np.argsort(-acc, kind="stable")[:3])
    assert list(est.member_indices_) == list(est.ranking_[:3])


# --------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("make", [
    lambda: ens.MajorityVote(k=4), lambda: ens.SoftVote(k=4), lambda: ens.WeightedVote(k=4),
    lambda: ens.WeightedVote(k=4, voting="hard"), lambda: ens.GreedySelection(max_steps=5),
    lambda: ens.BestSubset(k=4, top_n=4),
])
def test_identical_members_equal_the_member(make):
    rng = np.random.default_rng(1)
    X1, y = random_stack(rng, 1, 300, 5)
    X = np.repeat(X1, 4, axis=0)
    est = make().fit(X, y)
    np.testing.assert_array_equal(est.predict(X), X1[0].argmax(1))
    assert est.val_accuracy_ == pytest.approx((X1[0].argmax(1) == y).mean())


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("voting", ["soft", "hard"])
def test_greedy_never_worse_than_best_single_member_on_val(seed, voting):
    rng = np.random.default_rng(seed)
    X, y = random_stack(rng, 8, 150, 4, skill=1.0)
    est = ens.GreedySelection(max_steps=10, voting=voting).fit(X, y)
    best_single = (X.argmax(2) == y).mean(1).max()
    assert est.val_accuracy_ >= best_single
    assert est.trace_[0]["added"] == str(est.ranking_[0])  # step 1 is the best single member
    assert len(est.trace_) == 10
    assert sum(est.weights_) <= 10


def test_greedy_with_replacement_weights_are_counts():
    rng = np.random.default_rng(7)
    X, y = random_stack(rng, 5, 200, 3, skill=1.0)
    est = ens.GreedySelection(max_steps=15).fit(X, y)
    assert all(float(w).is_integer() and w >= 1 for w in est.weights_)
    counts = np.zeros(5)
    for step in est.trace_[: int(est.weights_.sum())]:
        counts[int(step["added"])] += 1
    np.testing.assert_array_equal(counts[est.member_indices_], est.weights_)


def test_best_subset_is_the_best_of_the_top_n():
    rng = np.random.default_rng(2)
    X, y = random_stack(rng, 10, 200, 4, skill=1.2)
    est = ens.BestSubset(k=4, top_n=8).fit(X, y)
    assert est.selection_["subsets_evaluated"] == 70
    pool = list(est.ranking_[:8])
    best = max(ens._accuracy(vote.combine(X[sorted(c, key=pool.index)]).pred, y)
               for c in itertools.combinations(pool, 4))
    assert est.val_accuracy_ == best
    assert set(est.member_indices_) <= set(pool)


def test_weighted_vote_weights():
    # Member 0 is right alone; with a large enough given weight it wins the soft vote.
    probs = np.array([[[0.9, 0.1]], [[0.4, 0.6]], [[0.4, 0.6]]])
    y = np.array([0])
    ids = ["a", "b", "c"]
    assert ens.WeightedVote(ids, k=3, weights=[1, 1, 1], voting="hard").fit(probs, y).predict(probs).tolist() == [1]
    est = ens.WeightedVote(ids, k=3, weights={"a": 3.0, "b": 1.0, "c": 1.0}, voting="hard").fit(probs, y)
    assert est.predict(probs).tolist() == [0] and est.weights_.tolist() == [3.0, 1.0, 1.0]
    est = ens.WeightedVote(ids, k=3).fit(probs, y)  # default: weights = validation accuracies
    assert est.weights_.tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="k=3"):
        ens.WeightedVote(ids, k=3, weights=[1, 2]).fit(probs, y)


# --------------------------------------------------------------------------- scikit-learn style
def test_sklearn_conventions():
    rng = np.random.default_rng(4)
    X, y = random_stack(rng, 5, 100, 3)
    est = ens.MajorityVote(["a", "b", "c", "d", "e"], k=3)
    assert est.get_params() == {"members": ["a", "b", "c", "d", "e"], "k": 3}
    assert clone(est).set_params(k=2).k == 2
    with pytest.raises(NotFittedError):
        est.predict(X)
    assert not hasattr(est, "predict_proba")  # hard voting: votes, no probabilities
    est.fit(X, y)
    for attr in ("members_", "member_indices_", "weights_", "ranking_", "candidate_val_acc_",
                 "val_accuracy_", "selection_", "classes_", "candidates_"):
        assert hasattr(est, attr)
    assert est.score(X, y) == pytest.approx(est.val_accuracy_)
    assert est.votes(X).sum(axis=1).tolist() == [3] * 100
    soft = ens.SoftVote(k=3).fit(X, y)
    np.testing.assert_allclose(soft.predict_proba(X).sum(axis=1), 1.0)
    np.testing.assert_array_equal(soft.predict(X), soft.predict_proba(X).argmax(1))
    with pytest.raises(ValueError, match="only 5 candidates"):
        ens.MajorityVote(k=6).fit(X, y)


def test_27_members_6000_images_is_fast():
    rng = np.random.default_rng(5)
    X, y = random_stack(rng, 27, 6000, 8)
    start = time.perf_counter()
    est = ens.MajorityVote(k=4).fit(X[:, :4000], y[:4000])
    est.predict(X[:, 4000:])
    vote.combine(X, voting="hard")  # all 27 at once
    assert time.perf_counter() - start < 5.0  # ~0.05 s on 2 idle cores: 100x for a shared CPU
