"""One training run, whole: the run lifecycle around fitting, with the out-of-memory retry.

``run_training(cfg) -> dict`` is what ``bench-train`` runs per model (and what the protocols
that train classifiers, cross-validation and the two-level classifier, call): it never raises
for a model's failure (exception, NaN loss, out of memory), which becomes a ``failed`` row with
its error, so a sweep goes on; Ctrl-C still stops everything (the run resumes later).

Layers: :mod:`bench.cli.train` (the command line) -> this -> :mod:`bench.training.classifier` (the stages of a
run) -> :mod:`bench.training.engine` (tensors in, numbers out); :class:`bench.runs.RunLifecycle` owns the
run folder's states.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from bench.training import classifier as fitting
from bench import runs
from bench.config import run_identity
from bench.training.device import release_memory
from bench.results.leaderboard import refresh_leaderboard
from bench.training.loggers import flatten, make_logger
from bench.models import get_model_spec
from bench.training.threads import thread_policy

log = logging.getLogger("bench.train")


def run_training(cfg: DictConfig, *, epoch_hook=None) -> dict:
    """Train, select by validation, evaluate on test, write the run folder; never raises
    for a model failure (the returned dict has ``status`` and ``error``). ``epoch_hook(epoch, numbers)``,
    called after each epoch with its history row, may return a reason to stop there (bench-tune's
    pruner): the run then ends as completed with ``stopped_early`` in metrics.json."""
    exp_dir = runs.experiment_dir(cfg.paths.results_dir, cfg.experiment_name)
    model_name, seed = cfg.model.name, int(cfg.seed)
    run_dir = runs.RunDir.for_run(exp_dir, model_name, seed)
    container, chash = run_identity(cfg)
    life = runs.RunLifecycle(run_dir, chash, OmegaConf.to_yaml(container), model=model_name, seed=seed,
                             experiment=cfg.experiment_name, after=lambda: refresh_leaderboard(exp_dir))
    try:
        return life.run(lambda: fit_with_oom_retry(cfg, run_dir, exp_dir, chash, epoch_hook))
    finally:
        release_memory()


class HookedTracker:
    """The run's tracker, then ``hook(epoch, numbers)`` after each epoch; its reason to stop is kept."""

    def __init__(self, tracker, hook):
        self.tracker, self.hook, self.stop_reason = tracker, hook, None

    def epoch(self, epoch, numbers):
        self.tracker.epoch(epoch, numbers)
        self.stop_reason = self.hook(epoch, numbers) or None

    def __getattr__(self, name):
        return getattr(self.tracker, name)


def fit_with_oom_retry(cfg, run_dir: runs.RunDir, exp_dir: Path, chash: str, epoch_hook=None) -> dict:
    """On CUDA out-of-memory, retry once with half the micro-batch and twice the gradient
    accumulation, so the effective batch (and the protocol) stays the same."""
    fit = fitting.fit
    if get_model_spec(cfg.model.name).task == "detection":  # same lifecycle, the detector's stages
        from bench.training.detector import fit_detector as fit
    with thread_policy(cfg.trainer.num_threads, cfg.paths.cache_dir) as threads, \
            make_logger(cfg, runs.model_dirname(cfg.model.name), int(cfg.seed)) as tracker:
        tracker.params(flatten(OmegaConf.to_container(cfg, resolve=True)))
        if epoch_hook is not None:
            tracker = HookedTracker(tracker, epoch_hook)
        try:
            return fit(cfg, run_dir, exp_dir, chash, threads, tracker, grad_accum=cfg.trainer.grad_accum)
        except torch.cuda.OutOfMemoryError as exc:
            if cfg.trainer.batch_size // (2 * cfg.trainer.grad_accum) < 1:
                raise
            message = str(exc).splitlines()[0]
        # Retry outside the except block: there the traceback still holds the failed attempt's
        # frames, and with them its model, optimizer state and batches on the GPU.
        log.warning("CUDA out of memory (%s); retrying with half the micro-batch", message)
        release_memory()
        return fit(cfg, run_dir, exp_dir, chash, threads, tracker, grad_accum=2 * cfg.trainer.grad_accum,
                   oom_retry=True)
