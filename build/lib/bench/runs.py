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
import re
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

log = logging.getLogger("bench.runs")

STATUS_RUNNING = "running"
STATUS_COMPLETED = "completed"
STATUS_FAILED = "failed"


# --------------------------------------------------------------------------- atomic I/O
_UMASK = os.umask(0)
os.umask(_UMASK)


# Temporary files are named .<name>.<host>~<pid>.<random>.tmp: a later start can tell the leftovers
# of a killed process (same host, pid gone) from a write in progress, and remove them.
_TMP_PATTERN = re.compile(r"^\..+\.(?P<host>[^.~]+)~(?P<pid>\d+)\.[^.]+\.tmp$")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_owner()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results should read like any other file
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _host() -> str:
    return socket.gethostname().replace(".", "_").replace("~", "_") or "host"


def _owner() -> str:
    # Computed per call: after a fork (decode workers) the pid differs from the one at import.
    return f"{_host()}~{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder) -> list[Path]:
    """Delete the temporary files a killed process left in ``folder`` (not recursive): those of this
    host whose writer is gone. A full-size store or checkpoint temporary is gigabytes; without
    this every kill would leave one for good. Returns what was removed."""
    folder = Path(folder)
    removed = []
    host = _host()
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _TMP_PATTERN.match(entry.name)
        if not m or m.group("host") != host or _pid_alive(int(m.group("pid"))):
            continue
        try:
            entry.unlink()
            removed.append(entry)
        except OSError:
            continue
    if removed:
        log.info("removed %d temporary file(s) left by killed processes in %s", len(removed), folder)
    return removed


def write_bytes_atomic(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def write_text_atomic(path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_csv_atomic(path, frame: pd.DataFrame) -> None:
    write_text_atomic(path, frame.to_csv(index=False))


def save_torch_atomic(path, obj: Any, *, durable: bool = True) -> None:
    """``torch.save`` through a temporary file and a rename: a killed process never leaves a
    half-written file. ``durable=False`` skips the fsync, which only matters if the machine
    itself goes down before the page cache is flushed; per-epoch checkpoints use it (a
    90 MB fsync per epoch is measurable in a sweep of small models) and the run makes its
    final files durable once with ``fsync_file``."""
    import torch  # local: readers of results need not import torch

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())


def fsync_file(path) -> None:
    """Flush a file written with ``durable=False`` to the disk."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def read_json(path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _json_default(obj):
    # numpy scalars and paths appear in metric dicts; make them plain JSON.
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


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
    metrics = property(lambda self: self.root / "metrics.json")
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
                metrics = read_json(self.metrics)
                if isinstance(metrics, dict) and "val" in metrics and "test" in metrics:
                    return metrics
                problem = "it lacks the val/test results"
            except (OSError, ValueError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            log.warning("%s is unreadable (%s); evaluating the run again from its checkpoints", self.metrics, problem)
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


# Below this much free space a write error is taken for a full disk (torch reports one as
# "enforce fail at inline_container.cc ... file write failed", not as ENOSPC).
DISK_FULL_MARGIN = 64 * 2**20


def explain_error(exc: BaseException, folder) -> str:
    """A failed run's one-line error; a full disk (ENOSPC, or a write error with the disk nearly
    full) becomes one sentence saying where, how much is free and what to do."""
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
        return (f"disk full at {existing} ({free / 2**20:.0f} MB free) while writing this run's files. Earlier "
                "results are intact; free some space (or set paths.results_dir=... on a bigger disk) and rerun "
                f"the same command to resume. ({text.splitlines()[0][:200]})")
    return text


class RunBusy(RuntimeError):
    """Another process is working in this run folder."""

    def __init__(self, run_dir: RunDir, holder: str):
        self.run_dir, self.holder = run_dir, holder
        super().__init__(f"{run_dir.root} is being trained by {holder}")


def iter_run_dirs(exp_dir) -> Iterator[RunDir]:
    """Every run folder of an experiment (those with a status file), in sorted order."""
    runs = Path(exp_dir) / "runs"
    if not runs.is_dir():
        return
    for status in sorted(runs.glob("*/seed*/status.json")):
        yield RunDir(status.parent)


# --------------------------------------------------------------------------- config identity
def config_hash(cfg_container: dict, ignore: tuple[str, ...] = ()) -> str:
    """A short stable hash of a resolved config, used to decide whether a finished run
    can be reused: a changed config never silently reuses an old result.

    ``ignore`` lists top-level keys that do not change results (paths, logging).
    """
    clean = {k: v for k, v in cfg_container.items() if k not in ignore}
    text = json.dumps(clean, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
