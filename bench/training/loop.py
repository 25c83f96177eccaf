"""The one training loop: epochs, the best epoch by validation, checkpoints and resume, for every
kind of model.

A kind of model plugs in as a :class:`Task` (a classifier: :mod:`.classifier`; a detector:
:mod:`.detector`): its epoch (train, then validate: the history row and the validation score),
what it restores on resume beyond the weights and optimiser, and its results once best.pt's
weights are back. Everything else is written here, once::

    run_loop(task, run_dir, chash, threads, tracker)
      resume(...)              last.pt of this config: weights, optimiser, schedule, RNG, history, best
      per epoch:               the global RNG seeded per epoch (a resumed epoch replays an uninterrupted
                               one), the learning rate it starts with, task.epoch, the schedule's step
                               (unless it steps per optimizer step), history.csv and the tracker, the
                               best epoch (the first with the highest validation score), then best.pt
                               and last.pt at most every trainer.checkpoint_every_s and after the last
      load_best(...)           best.pt's weights back in the model (made durable first)
      task.results(...)        the metrics.json record, written last: its presence means complete

Rules that change numbers (and are tested as such, tests/training/test_rules.py): the best epoch
is the first with the highest validation score; the results come from best.pt; the learning rate
steps once per epoch (or per optimizer step); a resumed run replays what an uninterrupted one
would have done.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

import pandas as pd
import torch

from bench import runs
from bench.runs import files as run_files
from bench.training.checkpoints import read_last, save_checkpoint, save_last
from bench.training.preemption import HeldSignal

log = logging.getLogger("bench.train")


@dataclass
class Progress:
    """Where a run stands: epochs done, their history, the best epoch so far."""

    next_epoch: int = 0
    history: list = field(default_factory=list)
    best_score: float = -1.0
    best_epoch: int = 0
    amp: bool | None = None  # the precision trained in (None: a classifier's CPU trial decides it)
    best_val: dict | None = None  # the best epoch's validation result, when it ran in this process
    best_weights: dict | None = None  # its weights (a CPU copy) until written to best.pt
    last_write: float = field(default_factory=time.monotonic)
    epoch_lr: float | None = None  # the learning rate the current epoch started with
    stopped: dict | None = None  # {"after_epoch", "why"} when a hook stopped the run early (bench-tune's pruner)


class Task(Protocol):
    """What a kind of model plugs into the loop."""

    cfg: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    per_step: bool  # the schedule steps after every optimizer step (it does so inside the epoch)
    select_by: str  # the validation number the score is (recorded in best.pt)
    checkpoint_meta: dict  # what best.pt records to rebuild and use the model

    def start(self) -> Progress:
        """A fresh run's progress (e.g. the precision it trains in, if known)."""

    def resumed(self, state: dict, progress: Progress) -> None:
        """What to restore from last.pt beyond weights, optimiser, schedule, RNG and history."""

    def epoch(self, epoch: int, progress: Progress) -> tuple[dict, float, dict | None]:
        """Train one epoch and validate: (history row, validation score, validation result to keep
        for the results if this epoch is the best, or None)."""

    def describe(self, epoch: int, row: dict) -> str:
        """The epoch's log line, after ``<model> epoch k/N: ``."""

    def results(self, progress: Progress, run_dir: runs.RunDir) -> dict:
        """With best.pt's weights loaded: the predictions files and the metrics.json record."""

    def summary(self, metrics: dict) -> str:
        """The run's closing log line, after ``<model> seed <seed>: ``."""


def run_loop(task: Task, run_dir: runs.RunDir, chash: str, threads, tracker) -> dict:
    """Train ``task`` epoch by epoch (resuming an interrupted run), keep the best epoch by
    validation, write the run folder; returns the metrics.json record."""
    cfg = task.cfg
    progress = resume(task, run_dir, chash)
    with HeldSignal() as warning:  # the scheduler's warning waits for the epoch's end (preemption.py)
        for epoch in range(progress.next_epoch, cfg.trainer.epochs):
            threads.rebalance()  # jobs that started or ended since: this job's share of the cores
            # Global RNG (dropout, augmentation draws) seeded per epoch: a resumed epoch replays an uninterrupted one.
            torch.manual_seed(cfg.seed * 1_000_003 + epoch)
            progress.epoch_lr = task.optimizer.param_groups[0]["lr"]
            row, score, val = task.epoch(epoch, progress)
            if not task.per_step:
                task.scheduler.step()  # once per epoch, after it
            record_epoch(task, progress, epoch, row, score, val, run_dir, tracker)
            stop = getattr(tracker, "stop_reason", None)  # an epoch hook asked to stop (bench-tune's pruner)
            write_checkpoints(task, progress, epoch, run_dir, chash, now=warning.pending is not None or bool(stop))
            warning.release()  # requeued by the scheduler from here (a no-op without a warning)
            if stop:
                progress.stopped = {"after_epoch": epoch + 1, "why": stop}
                log.info("%s seed %d: stopped after epoch %d: %s", cfg.model.name, cfg.seed, epoch + 1, stop)
                break
    load_best(task, run_dir)
    metrics = task.results(progress, run_dir)
    if progress.stopped:
        metrics["stopped_early"] = progress.stopped
    run_files.write_metrics(run_dir.root, metrics)
    tracker.final(metrics)
    log.info("%s seed %d: %s -> %s", cfg.model.name, cfg.seed, task.summary(metrics), run_dir.root)
    return metrics


def resume(task: Task, run_dir: runs.RunDir, chash: str) -> Progress:
    """The progress of a fresh run, or of an interrupted one with the same config, restored from last.pt."""
    progress = task.start()
    state = read_last(run_dir, chash)
    if state is None:
        return progress
    task.model.load_state_dict(state["model"])
    task.optimizer.load_state_dict(state["optimizer"])
    task.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    log.info("resuming %s after epoch %d", run_dir.root, state["epoch"])
    resumed = Progress(next_epoch=state["epoch"], history=list(state["history"]), best_score=state["best_score"],
                       best_epoch=state["best_epoch"], amp=state.get("amp"))
    task.resumed(state, resumed)
    return resumed


def record_epoch(task: Task, progress: Progress, epoch: int, row: dict, score: float, val: dict | None,
                 run_dir: runs.RunDir, tracker) -> None:
    """history.csv and the tracker; the best epoch by the validation score (a tie keeps the earlier)."""
    cfg = task.cfg
    progress.history.append({"epoch": epoch + 1, "lr": progress.epoch_lr, **row})
    tracker.epoch(epoch + 1, {k: float(v) for k, v in progress.history[-1].items() if k not in ("epoch", "seconds")})
    log.info("%s epoch %d/%d: %s", cfg.model.name, epoch + 1, cfg.trainer.epochs, task.describe(epoch, row))
    if score > progress.best_score:  # strictly greater: a tie keeps the earlier epoch
        progress.best_score, progress.best_epoch, progress.best_val = score, epoch + 1, val
        model = getattr(task.model, "_orig_mod", task.model)  # torch.compile wraps the module
        progress.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    runs.write_csv_atomic(run_dir.history, pd.DataFrame(progress.history))


def write_checkpoints(task: Task, progress: Progress, epoch: int, run_dir: runs.RunDir, chash: str, *,
                      now: bool = False) -> None:
    """best.pt (when the best changed) then last.pt: after the last epoch, ``now`` (the scheduler's warning
    came), and otherwise at most every trainer.checkpoint_every_s (a 1 GB VGG checkpoint per 8 s GPU epoch
    would cost a quarter of the time)."""
    cfg = task.cfg
    final = epoch + 1 == cfg.trainer.epochs
    if not (final or now or time.monotonic() - progress.last_write >= cfg.trainer.checkpoint_every_s):
        return
    # best.pt first: on resume it is the record of the best epoch (see checkpoints.read_last).
    if progress.best_weights is not None:
        save_checkpoint(run_dir.best_ckpt, progress.best_weights, epoch=progress.best_epoch,
                        val_score=progress.best_score, select_by=task.select_by, durable=False, **task.checkpoint_meta)
        progress.best_weights = None
    save_last(run_dir.last_ckpt, model=task.model, optimizer=task.optimizer, scheduler=task.scheduler,
              epoch=epoch + 1, best_score=progress.best_score, best_epoch=progress.best_epoch,
              history=progress.history, config_hash=chash, amp=progress.amp)
    progress.last_write = time.monotonic()


def load_best(task: Task, run_dir: runs.RunDir) -> None:
    """best.pt's weights back in the model, best.pt made durable first (the run is about to be
    marked completed on the strength of it)."""
    if not run_dir.best_ckpt.exists():
        raise RuntimeError("no epoch was trained (trainer.epochs=0?); nothing to evaluate")
    runs.fsync_file(run_dir.best_ckpt)
    task.model.load_state_dict(torch.load(run_dir.best_ckpt, map_location="cpu", weights_only=True)["model"])
