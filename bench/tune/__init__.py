"""``bench-tune`` (issue 29): the same tuning budget for every architecture. One Optuna study per
architecture (TPE, seeded), every trial a normal run folder under ``results/<experiment>/tuning/<model>/``,
asynchronous workers sharing the study through a journal file (no batch barrier, no database server),
a pruner fed each epoch's validation number, and a study that a second command continues.

Modules: :mod:`.space` (the search space's text), :mod:`.study` (trials, workers, resume, the best
configuration chosen on validation only).
"""

from bench.tune.space import SpaceError, parse_space, suggest
from bench.tune.study import best_trials, run_studies, trial_objective

__all__ = ["SpaceError", "parse_space", "suggest", "best_trials", "run_studies", "trial_objective"]
