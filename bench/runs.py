"""The run folder: its layout, atomic writes and status, defined once.

Every reader of results (leaderboard, ensemble, report) goes through here, so the
on-disk format lives in one module::

    <results_dir>/<experiment>/
        manifest.csv                 the split, shared by every run of the experiment
        runs/<model>/seed<seed>/
            config.yaml              the composed config of this run
            status.json              {"status": running|completed|failed, "config_hash", "error", ...}
            history.csv              one row per epoch
            metrics.json             final metrics on validation and test (best checkpoint)
            predictions_val.csv      path, label, predicted, one probability column per class
            predictions_test.csv
            excluded.csv             files left out at start, with the reason
            best.pt                  best-by-validation weights and class names
            last.pt                  full state of the last finished epoch (for resuming)

Writes go to a temporary file in the same folder and are renamed into place
(``os.replace`` is atomic on POSIX), so a kill at any moment leaves either the old
file or the new one, never half of one. metrics.json and the predictions files are written
and read by :mod:`bench.run_files`; a failed write is explained by :mod:`bench.write_errors`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

# Atomic writes live in bench.atomic; the run contract re-exports them (callers say runs.write_...).
from bench.atomic import (atomic_path, fsync_file, read_json, remove_stale_temporaries,  # noqa: F401
                          write_bytes_atomic, write_csv_atomic, write_json_atomic, write_text_atomic)
from bench.run_files import METRICS_JSON, UnreadableMetrics, read_metrics
from bench.write_errors import explain_error

log = logging.getLogger("bench.runs")

STATUS_RUNNING = "running"
STATUS_COMPLETED = "completed"
STATUS_FAILED = "failed"


# --------------------------------------------------------------------------- layout
def model_dirname(model_name: str) -> str:
    """Folder name for a model: ``timm/convnext_tiny`` -> ``timm--convnext_tiny``."""
    return model_name.replace("/", "--")


def experiment_dir(results_dir, experiment: str) -> Path:
    return Path(results_dir) / experiment


@dataclass(frozen=True)
class RunDir:
    """Paths of one run: ``<experiment_dir>/runs/<model>/seed<seed>/``."""

    root: Path

    @classmethod
    def for_run(cls, exp_dir, model_name: str, seed: int) -> "RunDir":
        return cls(Path(exp_dir) / "runs" / model_dirname(model_name) / f"seed{seed}")

    config = property(lambda self: self.root / "config.yaml")
    status = property(lambda self: self.root / "status.json")
    history = property(lambda self: self.root / "history.csv")
    metrics = property(lambda self: self.root / METRICS_JSON)
    excluded = property(lambda self: self.root / "excluded.csv")
    best_ckpt = property(lambda self: self.root / "best.pt")
    last_ckpt = property(lambda self: self.root / "last.pt")

    def predictions(self, split: str) -> Path:
        return self.root / f"predictions_{split}.csv"

    def read_status(self) -> dict | None:
        try:
            return read_json(self.status)
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def set_aside(self, old_hash: str | None) -> Path:
        """Move a run folder written under another config to ``replaced/``: a changed config
        never reuses an old result, and the old result is never deleted. Returns where it went."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        dest = self.root.parent / "replaced" / f"{self.root.name}-{old_hash}-{stamp}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.root.rename(dest)
        return dest

    def completed_metrics(self, config_hash: str) -> dict | None:
        """The metrics of this run if it completed under ``config_hash`` (so it can be
        skipped), else None. A run folder written under another config is first moved to
        ``replaced/`` (logged), so a changed config never silently reuses an old result.
        A completed run whose metrics.json cannot be read is treated as unfinished: running it
        again resumes from its last checkpoint and writes the file anew."""
        previous = self.read_status()
        if previous and previous.get("config_hash") != config_hash:
            dest = self.set_aside(previous.get("config_hash"))
            log.warning("config changed since %s was written; the old run was moved to %s", self.root, dest)
            return None
        if previous and previous.get("status") == STATUS_COMPLETED and self.metrics.exists():
            try:
                return read_metrics(self.root)
            except (OSError, UnreadableMetrics) as exc:
                log.warning("%s is unreadable (%s); evaluating the run again from its checkpoints", self.metrics, exc)
        return None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold this run folder while a process works in it. A second process asking for it gets
        :class:`RunBusy` (naming the holder) at once; the lock dies with its process, so a
        killed run never blocks a rerun. The lock file sits beside the folder, not in it, so
        moving a folder to ``replaced/`` never moves a lock. No-op where fcntl is missing."""
        try:
            import fcntl
        except ImportError:  # not POSIX
            yield
            return
        path = self.root.parent / f".{self.root.name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                raise RunBusy(self, holder) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{socket.gethostname()} pid {os.getpid()}".encode(), 0)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def record_failure(self, exc: BaseException, traceback_text: str, *, config_hash: str, error: str | None = None,
                       **extra) -> str:
        """Status ``failed`` with a one-line error, and the full traceback in error.log."""
        error = error or f"{type(exc).__name__}: {exc}"
        write_text_atomic(self.root / "error.log", traceback_text)
        self.write_status(STATUS_FAILED, config_hash=config_hash, error=error, **extra)
        return error

    def write_status(self, status: str, *, config_hash: str, error: str | None = None, **extra) -> None:
        payload = {
            "status": status,
            "config_hash": config_hash,
            "error": error,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **extra,
        }
        write_json_atomic(self.status, payload)



class RunBusy(RuntimeError):
    """Another process is working in this run folder."""

    def __init__(self, run_dir: RunDir, holder: str):
        self.run_dir, self.holder = run_dir, holder
        super().__init__(f"{run_dir.root} is being trained by {holder}")


def headline(split_metrics: dict) -> float | None:
    """A split's headline number: accuracy for a classifier, mAP for a detector."""
    return split_metrics.get("accuracy", split_metrics.get("map"))


# Where each trainer.select_by value (and a detector's val_map) sits in a metrics.json's "val" record.
_SELECTED = {"val_acc": ("accuracy",), "val_balanced_acc": ("balanced_accuracy",), "val_macro_f1": ("macro", "f1"),
             "val_map": ("map",)}


def selection_score(metrics: dict) -> float | None:
    """The validation number that picked the run's best epoch (its ``select_by``; accuracy for runs
    written before there was a choice): what a hyper-parameter sweeper must optimise, so that it
    optimises what the leaderboard ranks by."""
    value = metrics.get("val") or {}
    for key in _SELECTED.get(metrics.get("select_by") or "val_acc", ("accuracy",)):
        value = value.get(key) if isinstance(value, dict) else None
    return value


class RunLifecycle:
    """One run's life in its folder, defined once for every protocol (training, the two-level
    classifier, the SVMs): lock the folder, skip it when it completed under this config, else
    write config.yaml and ``running``; then ``completed`` or a ``failed`` row with the error;
    then refresh the experiment's tables (``after``). Never raises for the work's failure::

        life = RunLifecycle(run_dir, chash, config_yaml, model=name, seed=seed, after=refresh)
        result = life.run(lambda: fit(...))      # begin + work + complete / fail + close

    ``begin``/``complete``/``fail``/``close`` are there for protocols that start several runs
    before doing work they share (the SVMs of one feature extractor). A KeyboardInterrupt leaves
    the run ``running``: the next start resumes it.
    """

    def __init__(self, run_dir: RunDir, config_hash: str, config_yaml: str, *, model: str, seed: int,
                 experiment: str | None = None, after: Callable[[], None] | None = None):
        self.run_dir, self.config_hash, self.config_yaml = run_dir, config_hash, config_yaml
        self.model, self.seed, self.after = model, int(seed), after
        self.summary = {"model": model, "seed": int(seed), "experiment": experiment, "run_dir": str(run_dir.root)}
        self._lock = None

    def begin(self) -> dict | None:
        """Lock and start the run: None when the work is to be done, else the run's final result
        (``skipped``: completed before with this config, or being trained by another process;
        ``failed``: the folder is in use with another config)."""
        lock = self.run_dir.lock()
        try:
            lock.__enter__()
        except RunBusy as busy:
            return self._busy(busy)
        self._lock = lock
        done = self.run_dir.completed_metrics(self.config_hash)
        if done is not None:
            log.info("%s seed %d: already completed with this config, skipped (%s)", self.model, self.seed,
                     self.run_dir.root)
            self.close(refresh=False)  # nothing changed
            return {**self.summary, "status": "skipped", "val_acc": headline(done["val"]),
                    "test_acc": headline(done["test"]), "val_score": selection_score(done)}
        try:
            self.run_dir.root.mkdir(parents=True, exist_ok=True)
            for folder in (self.run_dir.root, self.run_dir.root.parents[2]):  # leftovers of killed writers
                remove_stale_temporaries(folder)
            write_text_atomic(self.run_dir.config, self.config_yaml)
            self.run_dir.write_status(STATUS_RUNNING, config_hash=self.config_hash, model=self.model, seed=self.seed)
        except OSError as exc:  # e.g. a full disk before anything ran
            return self.fail(exc, "")
        return None

    def complete(self, metrics: dict, **result) -> dict:
        """Mark the run completed; its result (val/test accuracy) for the caller."""
        try:
            self.run_dir.write_status(STATUS_COMPLETED, config_hash=self.config_hash, model=self.model,
                                      seed=self.seed)
        except OSError as exc:
            return self.fail(exc, "")
        out = {**self.summary, "status": STATUS_COMPLETED, "val_acc": headline(metrics["val"]),
               "test_acc": headline(metrics["test"]), "val_score": selection_score(metrics), **result}
        self.close()
        return out

    def fail(self, exc: BaseException, traceback_text: str) -> dict:
        """A failed row: one-line error in status.json (a full disk said so), the traceback in
        error.log; if even that cannot be written, the result still says why."""
        error = explain_error(exc, self.run_dir.root)
        try:
            self.run_dir.record_failure(exc, traceback_text, config_hash=self.config_hash, model=self.model,
                                        seed=self.seed, error=error)
        except OSError as record_exc:  # e.g. the disk is full: say so once, without a chain of tracebacks
            error += f" (the failure could not be recorded in {self.run_dir.status} either: {record_exc})"
        log.error("%s seed %d FAILED: %s", self.model, self.seed, error)
        self.close()
        return {**self.summary, "status": STATUS_FAILED, "error": error}

    def close(self, refresh: bool = True) -> None:
        """Release the folder and refresh the experiment's tables (once)."""
        if self._lock is not None:
            lock, self._lock = self._lock, None
            lock.__exit__(None, None, None)
            if refresh and self.after is not None:
                self.after()

    def run(self, work: Callable[[], dict]) -> dict:
        """begin, then ``work() -> metrics``, then complete or fail; the lock is always released."""
        import traceback

        early = self.begin()
        if early is not None:
            return early
        try:
            metrics = work()
        except KeyboardInterrupt:
            self.close()
            raise  # stays "running": the next invocation resumes it
        except Exception as exc:  # a failed model is a row with an error, never a crash of the sweep
            return self.fail(exc, traceback.format_exc())
        return self.complete(metrics)

    def _busy(self, busy: RunBusy) -> dict:
        # Another process trains this folder: the same run (two identical sweeps started together)
        # is left to it; another config must not move or overwrite it under its feet.
        holder = self.run_dir.read_status() or {}
        if holder.get("config_hash") == self.config_hash:
            log.info("%s seed %d: being trained by %s; skipped here", self.model, self.seed, busy.holder)
            return {**self.summary, "status": "skipped", "note": f"being trained by {busy.holder}"}
        error = (f"{self.run_dir.root} is being trained by {busy.holder} with another config; this run did not "
                 "start and nothing of that run was touched. Rerun this command when that one is done, or give "
                 "this run its own experiment_name=...")
        log.error("%s seed %d: %s", self.model, self.seed, error)
        return {**self.summary, "status": STATUS_FAILED, "error": error}


def iter_run_dirs(exp_dir) -> Iterator[RunDir]:
    """Every run folder of an experiment (those with a status file), in sorted order."""
    runs = Path(exp_dir) / "runs"
    if not runs.is_dir():
        return
    for status in sorted(runs.glob("*/seed*/status.json")):
        yield RunDir(status.parent)


# --------------------------------------------------------------------------- config identity
def config_hash(identity: dict) -> str:
    """A short stable hash of what decides a run's results (:func:`bench.config.run_identity`),
    used to decide whether a finished run can be reused: a changed config never silently
    reuses an old result."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
