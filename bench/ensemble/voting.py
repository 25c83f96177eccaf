"""How an ensemble's members are combined, image by image, and the tie rules of the vote.

:func:`combine` is the one combination rule: every estimator of :mod:`bench.ensemble`,
``bench-predict`` and ``bench-evaluate`` vote through it (members in rank order, best first).

Tie rules (all deterministic)
-----------------------------
*Votes (hard voting).* Each member votes for its most probable class. Among the
classes with the most votes (weighted votes for a weighted vote), the one with the
largest sum of the members' probabilities (weighted sum) wins; if still tied, the
class voted for by the best-ranked member among those voting for a tied class; finally
the lowest class index. Scores equal within 1e-9 count as tied.

*Soft voting.* The class with the largest mean (weighted) probability; ties: more
(weighted) votes, then the best-ranked member's vote, then the lowest class index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

TIE_TOL = 1e-9  # scores (votes, probability sums) equal within this count as tied
HARD, SOFT = "hard", "soft"


@dataclass
class Combined:
    """The result of combining members: predicted class, (weighted) votes, mean probabilities."""

    pred: np.ndarray  # (N,) int
    votes: np.ndarray  # (N, C) float: (weighted) number of members voting for each class
    proba: np.ndarray  # (N, C) float: (weighted) mean of the members' probabilities


def resolve_ties(keys: Sequence[np.ndarray], member_votes: np.ndarray) -> np.ndarray:
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
    return Combined(resolve_ties(keys, member_votes), votes, proba)


def confidence_of(combined: Combined, voting: str) -> np.ndarray:
    """How sure the ensemble is of each prediction: the share of (weighted) votes of the predicted
    class for a hard vote, its mean probability for a soft one."""
    rows = np.arange(len(combined.pred))
    if voting == HARD:
        total = combined.votes.sum(axis=1)
        return combined.votes[rows, combined.pred] / np.where(total > 0, total, 1.0)
    return combined.proba[rows, combined.pred]
