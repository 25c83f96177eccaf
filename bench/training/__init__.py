"""Training: one run from a composed config to its run folder (:mod:`.run`: the lifecycle and
the out-of-memory retry) through the one loop (:mod:`.loop`: epochs, the best epoch by
validation, checkpoints, resume) into which a classifier (:mod:`.classifier`) or a detector
(:mod:`.detector`) plugs its steps; with the tensors-in, numbers-out engine (:mod:`.engine`),
checkpoints, precision, device, threads, experiment trackers and progress bars.
"""

from bench.training.run import fit_with_oom_retry, run_training

__all__ = ["run_training", "fit_with_oom_retry"]
