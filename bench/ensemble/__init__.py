"""Ensembles of an experiment's runs, from their saved predictions: the estimators with
scikit-learn's API and their member-selection tie rules (:mod:`.estimators`), the vote image by
image and its tie rules (:mod:`.voting`), the completed runs read as candidates
(:mod:`.candidates`) and the ensemble folders (:mod:`.folders`)::

    from bench.ensemble import MajorityVote
    est = MajorityVote(members, k=4).fit(val_probs, val_labels)   # members chosen on validation
"""

from bench.ensemble.candidates import Candidates, EnsembleError, load_candidates, member_id
from bench.ensemble.estimators import BestSubset, GreedySelection, MajorityVote, SoftVote, WeightedVote
from bench.ensemble.folders import (ENSEMBLES_DIR, MEMBERS_CSV, PAPER_MEMBERS, EnsembleResult, make_estimator,
                                    run_ensemble)
from bench.ensemble.voting import HARD, SOFT, Combined, combine

__all__ = [
    "MajorityVote", "SoftVote", "WeightedVote", "GreedySelection", "BestSubset", "HARD", "SOFT", "Combined", "combine",
    "Candidates", "EnsembleError", "load_candidates", "member_id", "run_ensemble", "make_estimator",
    "EnsembleResult", "ENSEMBLES_DIR", "MEMBERS_CSV", "PAPER_MEMBERS",
]
