"""Voting (bench.ensemble.voting) on hand-built probabilities with known answers: majorities, the
tie rules, soft against hard votes, weights."""

from __future__ import annotations


import numpy as np
import pytest

from bench.ensemble import estimators as ens, voting as vote


# --------------------------------------------------------------------------- combining
@pytest.mark.known_answer
def test_majority_known_answer():
    # 3 members, 3 images, 3 classes: plain majorities.
    probs = np.array([
        [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]],
        [[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8]],
        [[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.3, 0.4, 0.3]],
    ])
    out = vote.combine(probs, voting="hard")
    assert out.pred.tolist() == [0, 1, 2]
    assert out.votes.tolist() == [[2, 1, 0], [1, 2, 0], [0, 1, 2]]
    np.testing.assert_allclose(out.proba, probs.mean(axis=0))


def test_vote_tie_rules():
    # 4 members in rank order, 2-2 votes between class 0 and 1 on every image.
    probs = np.array([
        # image 0: sums A=1.3, B=2.05 -> B although the best-ranked member voted A
        # image 1: sums equal -> the best-ranked member's vote (A)
        # image 2: sums equal, best-ranked member voted B -> B
        [[0.50, 0.30, 0.20], [0.6, 0.4, 0.0], [0.4, 0.6, 0.0]],
        [[0.10, 0.80, 0.10], [0.4, 0.6, 0.0], [0.6, 0.4, 0.0]],
        [[0.40, 0.35, 0.25], [0.6, 0.4, 0.0], [0.4, 0.6, 0.0]],
        [[0.30, 0.60, 0.10], [0.4, 0.6, 0.0], [0.6, 0.4, 0.0]],
    ])
    out = vote.combine(probs, voting="hard")
    assert out.votes[:, :2].tolist() == [[2, 2]] * 3
    assert out.pred.tolist() == [1, 0, 1]
    # Reversing the rank order flips only the rank-decided images.
    assert vote.combine(probs[::-1], voting="hard").pred.tolist() == [1, 1, 0]


def test_vote_tie_lowest_index_last():
    # Soft tie, equal votes, and no member votes for a tied class: lowest class index.
    probs = np.array([[[0.3, 0.3, 0.4]], [[0.3, 0.3, 0.4]]])
    probs_soft = np.array([[[0.45, 0.45, 0.10]], [[0.45, 0.45, 0.10]]])
    assert vote.combine(probs, voting="soft").pred.tolist() == [2]
    assert vote.combine(probs_soft, voting="soft").pred.tolist() == [0]  # argmax ties to class 0 in both members


def test_soft_tie_goes_to_more_votes():
    probs = np.array([[[0.9, 0.1]], [[0.3, 0.7]], [[0.3, 0.7]]])  # means 0.5/0.5, votes 1/2
    assert vote.combine(probs, voting="soft").pred.tolist() == [1]


def test_soft_and_hard_disagree():
    # One confident member against two lukewarm ones.
    probs = np.array([[[0.95, 0.05]], [[0.4, 0.6]], [[0.4, 0.6]]])
    assert vote.combine(probs, voting="hard").pred.tolist() == [1]
    assert vote.combine(probs, voting="soft").pred.tolist() == [0]
    y = np.array([0])
    assert ens.MajorityVote(k=3).fit(probs, y).predict(probs).tolist() == [1]
    assert ens.SoftVote(k=3).fit(probs, y).predict(probs).tolist() == [0]


def test_zero_weight_member_does_not_count():
    probs = np.array([[[0.9, 0.1]], [[0.2, 0.8]], [[0.3, 0.7]]])
    assert vote.combine(probs, [1, 1, 0], voting="hard").pred.tolist() == [0]  # 1-1 tie, sums 1.1 vs 0.9
    with pytest.raises(ValueError, match="weights"):
        vote.combine(probs, [1, -1, 0])
