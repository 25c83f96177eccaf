"""Atomic file writes: a kill at any moment leaves the old file or the new one, never half.

Every write goes to a temporary file in the target's folder (named
``.<name>.<host>~<pid>.<random>.tmp``) and is renamed into place (``os.replace`` is atomic on
POSIX). :func:`remove_stale_temporaries` deletes what a killed writer left behind. The run
contract (:mod:`bench.runs`) re-exports these.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

log = logging.getLogger("bench.runs")


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
