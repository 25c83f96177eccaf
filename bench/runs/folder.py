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
and read by :mod:`bench.runs.files`; a failed write is explained by :mod:`bench.runs.disk_errors`.
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
from typing import Iterator

# Atomic writes live in bench.atomic; the run contract re-exports them (callers say runs.write_...).
from bench.runs.atomic import read_json, write_json_atomic, write_text_atomic
from bench.runs.files import METRICS_JSON, UnreadableMetrics, read_metrics
from bench.runs.lease import Lease, LeaseBusy

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
                # flock may not reach across the hosts of a shared filesystem: the lease does (runs/lease.py).
                with Lease(self.root.parent / f".{self.root.name}.lease"):
                    yield
            except LeaseBusy as busy:
                raise RunBusy(self, busy.holder) from None
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
