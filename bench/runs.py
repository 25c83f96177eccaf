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
file or the new one, never half of one.
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
from typing import Any, Callable, Iterator

# Atomic writes live in bench.atomic; the run contract re-exports them (callers say runs.write_...).
from bench import atomic
from bench.atomic import (atomic_path, fsync_file, read_json, remove_stale_temporaries,  # noqa: F401
                          write_bytes_atomic, write_csv_atomic, write_json_atomic, write_text_atomic)

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


def save_torch_atomic(path, obj: Any, *, durable: bool = True) -> None:
    """:func:`bench.atomic.save_torch_atomic`; a failed write carries what it was writing
    (``exc.write_need``: the path and the bytes of its tensors), so a full disk is said with how
    much the checkpoint needed, not only how much was free."""
    try:
        atomic.save_torch_atomic(path, obj, durable=durable)
    except Exception as exc:
        with contextlib.suppress(AttributeError, TypeError):  # an exception type without a __dict__
            exc.write_need = (Path(path), tensor_bytes(obj))
        raise


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) checkpoint object: about the size of its file."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def _write_need(exc: BaseException) -> tuple[Path, int] | None:
    """``write_need`` of ``exc`` or of an exception it was raised from / during."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        need = getattr(exc, "write_need", None)
        if need is not None:
            return need
        exc = exc.__cause__ or exc.__context__
    return None


# Below this much free space a write error is taken for a full disk (torch reports one as
# "enforce fail at inline_container.cc ... file write failed", not as ENOSPC).
DISK_FULL_MARGIN = 64 * 2**20


def explain_error(exc: BaseException, folder) -> str:
    """A failed run's one-line error; a full disk (ENOSPC, or a write error with the disk nearly
    full) becomes one sentence saying where, how much is free (and, for a checkpoint, how much it
    needed) and what to do."""
    import errno
    import shutil

    text = f"{type(exc).__name__}: {exc}"
    writing = isinstance(exc, OSError) or "inline_container" in text or "write" in text.lower()
    try:
        existing = next(p for p in [Path(folder), *Path(folder).parents] if p.exists())
        free = shutil.disk_usage(existing).free
    except (OSError, StopIteration):
        return text
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or (writing and free < DISK_FULL_MARGIN):
        need = _write_need(exc)
        needed = f", {need[1] / 2**20:.1f} MB needed to write {need[0].name}" if need else ""
        return (f"disk full at {existing} ({free / 2**20:.0f} MB free{needed}) while writing this run's files. Earlier "
                "results are intact; free some space (or set paths.results_dir=... on a bigger disk) and rerun "
                f"the same command to resume. ({text.splitlines()[0][:200]})")
    return text


class RunBusy(RuntimeError):
    """Another process is working in this run folder."""

    def __init__(self, run_dir: RunDir, holder: str):
        self.run_dir, self.holder = run_dir, holder
        super().__init__(f"{run_dir.root} is being trained by {holder}")


def headline(split_metrics: dict) -> float | None:
    """A split's headline number: accuracy for a classifier, mAP for a detector."""
    return split_metrics.get("accuracy", split_metrics.get("map"))


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
                    "test_acc": headline(done["test"])}
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
               "test_acc": headline(metrics["test"]), **result}
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


# --------------------------------------------------------------------------- metrics.json
# The record every table, report, ensemble and tracker reads: one writer and one reader, so what
# a reader relies on is checked where the file is written, not discovered by a KeyError later.
METRICS_JSON = "metrics.json"
# kind: the keys its readers rely on
METRICS_KEYS = {
    "run": ("model", "val", "test"),  # a training run (classifier or detector), SVM or two-level row
    "ensemble": ("val", "test", "members"),
    "external": ("name", "accuracy", "per_class"),  # bench-evaluate on another lab's folder
}


class UnreadableMetrics(ValueError):
    """A metrics.json that cannot be read, or lacks what its readers rely on (the message says which)."""


def metrics_problems(metrics: Any, kind: str) -> list[str]:
    if not isinstance(metrics, dict):
        return [f"not a JSON object but {type(metrics).__name__}"]
    problems = [f"no {key!r}" for key in METRICS_KEYS[kind] if key not in metrics]
    problems += [f"{split!r} is not a mapping" for split in ("val", "test")
                 if split in METRICS_KEYS[kind] and split in metrics and not isinstance(metrics[split], dict)]
    return problems


def write_metrics(folder, metrics: dict, kind: str = "run") -> Path:
    """``folder/metrics.json``, atomically; written last, so its presence means the result is complete.
    A record missing what readers rely on is a bug of the writer: it raises here, not at a reader."""
    problems = metrics_problems(metrics, kind)
    if problems:
        raise ValueError(f"metrics.json of {folder} ({kind}): {'; '.join(problems)}")
    path = Path(folder) / METRICS_JSON
    write_json_atomic(path, metrics)
    return path


def read_metrics(folder, kind: str = "run") -> dict:
    """The metrics.json of a run, ensemble or external-evaluation folder (or the file itself).
    FileNotFoundError when there is none; :class:`UnreadableMetrics` naming the file and why when it
    does not parse or lacks the keys of its kind."""
    path = Path(folder)
    path = path if path.name == METRICS_JSON else path / METRICS_JSON
    try:
        metrics = read_json(path)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:  # ValueError covers JSON and Unicode decode errors
        raise UnreadableMetrics(f"{path}: {type(exc).__name__}: {exc}") from exc
    problems = metrics_problems(metrics, kind)
    if problems:
        raise UnreadableMetrics(f"{path}: {'; '.join(problems)}")
    return metrics


# --------------------------------------------------------------------------- predictions
PROB_DECIMALS = 6  # the CSV's probabilities, for people; the .npz beside it keeps them exact


def probs_file(csv_path) -> Path:
    """``predictions_val.csv`` -> ``predictions_val.probs.npz`` (the exact probabilities)."""
    csv_path = Path(csv_path)
    return csv_path.with_name(csv_path.stem + ".probs.npz")


def write_predictions(path, paths, result: dict, class_names, extra: dict | None = None) -> None:
    """Per-image predictions of a split: ``path, label, predicted, prob_<class>...`` as a readable CSV
    (probabilities rounded to 6 decimals) and the probabilities as computed, with their paths, in
    ``<name>.probs.npz`` beside it (written first: the CSV's presence means both are there)."""
    import numpy as np
    import pandas as pd

    paths = [str(p) for p in paths]
    probs = np.asarray(result["probs"], dtype=np.float64)
    with atomic_path(probs_file(path)) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, probs=probs, paths=np.asarray(paths, dtype=str))
    frame = pd.DataFrame({"path": paths, "label": [class_names[i] for i in result["labels"]],
                          "predicted": [class_names[i] for i in result["preds"]]})
    for j, name in enumerate(class_names):
        frame[f"prob_{name}"] = probs[:, j].round(PROB_DECIMALS)
    for column, values in (extra or {}).items():  # protocol-specific columns after the standard ones
        frame[column] = values
    write_csv_atomic(path, frame)


class PredictionsError(ValueError):
    """A predictions file that cannot be read as one: the message names the file and the problem."""


def read_predictions(path, classes) -> "tuple[Any, Any, Any, Any]":
    """``(paths, labels, predicted, probs)`` of a predictions CSV, sorted by path; ``labels`` and
    ``predicted`` as class indices of ``classes``. The probabilities come from the ``.probs.npz``
    beside the CSV when it matches (exact); from the CSV otherwise (files written before the npz
    existed), where a prediction that ties another class after rounding is nudged up by one ulp
    so argmax reproduces the run's own vote."""
    import numpy as np
    import pandas as pd

    path = Path(path)
    frame = pd.read_csv(path, dtype={"path": str, "label": str, "predicted": str}, keep_default_na=False)
    prob_cols = [f"prob_{c}" for c in classes]
    missing = [c for c in ("path", "label", "predicted", *prob_cols) if c not in frame.columns]
    if missing:
        raise PredictionsError(f"{path} lacks the column(s) {missing}; expected path, label, predicted and "
                               f"prob_<class> for the classes {list(classes)}.")
    if frame["path"].duplicated().any():
        raise PredictionsError(f"{path} lists {frame['path'][frame['path'].duplicated()].iloc[0]!r} more than once.")
    index = {c: i for i, c in enumerate(classes)}
    bad = sorted(set(frame["label"]) - set(index) | set(frame["predicted"]) - set(index))
    if bad:
        raise PredictionsError(f"{path} has class names {bad} that are not among its classes {list(classes)}.")
    probs = _exact_probs(path, frame["path"].tolist(), len(classes))
    if probs is None:
        probs = _csv_probs(path, frame, prob_cols, frame["predicted"].map(index).to_numpy(int))
    order = np.argsort(frame["path"].to_numpy(str), kind="mergesort")
    return (frame["path"].to_numpy(str)[order], frame["label"].map(index).to_numpy(int)[order],
            frame["predicted"].map(index).to_numpy(int)[order], probs[order])


def _exact_probs(path: Path, paths: list[str], n_classes: int):
    import numpy as np

    try:
        with np.load(probs_file(path)) as data:
            probs, saved = data["probs"], [str(p) for p in data["paths"]]
    except (OSError, KeyError, ValueError):
        return None
    if saved != paths or probs.shape != (len(paths), n_classes):
        log.warning("%s does not match %s (another write?); using the CSV's rounded probabilities",
                    probs_file(path), path)
        return None
    return probs.astype(np.float64)


def _csv_probs(path: Path, frame, prob_cols: list[str], predicted):
    import numpy as np

    probs = frame[prob_cols].to_numpy(np.float64)
    rows = np.arange(len(frame))
    off = probs.argmax(axis=1) != predicted
    if off.any():
        top = probs.max(axis=1)
        if (probs[rows[off], predicted[off]] < top[off] - 10.0 ** -PROB_DECIMALS).any():
            raise PredictionsError(f"{path}: the 'predicted' column disagrees with the probabilities.")
        probs[rows[off], predicted[off]] = np.nextafter(top[off], np.inf)
    return probs


# --------------------------------------------------------------------------- config identity
def config_hash(identity: dict) -> str:
    """A short stable hash of what decides a run's results (:func:`bench.config.run_identity`),
    used to decide whether a finished run can be reused: a changed config never silently
    reuses an old result."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
