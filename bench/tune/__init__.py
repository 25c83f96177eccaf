"""``bench-tune`` (issue 29): the same tuning budget for every architecture. One Optuna study per
architecture (TPE, seeded), every trial a normal run folder under ``results/<experiment>/tuning/<model>/``,
asynchronous workers sharing the study through a journal file (no batch barrier, no database server),
a pruner fed each epoch's validation number, and a study that a second command continues.

Modules: :mod:`.space` (the search space's text), :mod:`.study` (trials, workers, resume, the best
configuration chosen on validation only), :mod:`.slurm` (the workers as Slurm array tasks, submitted and
walked away from), :mod:`.job` (what one command line asks for: its studies, and the retrains of --final).
"""

from bench.tune.space import SpaceError, parse_space, suggest
from bench.tune.study import (TUNED_DIR, TUNING_DIR, WORKER, best_trials, prepare_study, run_studies, storage_for,
                               study_name, trial_objective, trial_states, worker_identity)
from bench.tune.slurm import TuneWorker, is_slurm, queued_jobs, submit_workers
from bench.tune.job import TuneJob, TuneJobError, final_tasks, plan_job

__all__ = ["SpaceError", "parse_space", "suggest", "best_trials", "run_studies", "trial_objective", "storage_for",
           "study_name", "worker_identity", "TUNED_DIR", "TUNING_DIR", "WORKER", "prepare_study", "trial_states",
           "TuneWorker", "is_slurm", "queued_jobs", "submit_workers", "TuneJob", "TuneJobError", "plan_job",
           "final_tasks"]
