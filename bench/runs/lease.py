"""A run folder's lease across hosts: who trains it, with a heartbeat (issue 28).

``flock`` keeps two processes of one host out of a run folder, but on a filesystem shared by the
nodes of a cluster (NFS and the like) a lock taken on one host may not be seen on another. So beside
the flock, the holder keeps a lease file, ``.<run>.lease`` next to the folder: its host, pid and a
heartbeat (seconds since the epoch) that a thread rewrites every ``HEARTBEAT_S``.

- A lease of this host whose flock we now hold is the dead holder's: taken over without a word
  (flock died with its process).
- A lease of another host with a fresh heartbeat (younger than ``STALE_S``): the run is busy there.
- A lease of another host whose heartbeat is older than ``STALE_S``: its holder died without cleaning
  up (a node that crashed); taken over with a warning naming it.
- After writing its lease, a taker reads it back (a moment later when it took another host's stale
  lease): of two hosts that took one at the same time, the one whose lease is not there backs off.

``STALE_S`` is generous (10 minutes) because the hosts' clocks are compared: keep them in sync (NTP).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

from bench.runs.atomic import write_json_atomic

log = logging.getLogger(__name__)

HEARTBEAT_S = 30.0
STALE_S = 600.0
SETTLE_S = 0.2  # between writing a lease and reading it back


def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def read_lease(path: Path) -> dict | None:
    try:
        lease = json.loads(Path(path).read_text())
        return lease if isinstance(lease, dict) else None
    except (OSError, ValueError):
        return None


def holder_text(lease: dict) -> str:
    age = time.time() - float(lease.get("heartbeat", 0))
    return f"{lease.get('host')} pid {lease.get('pid')} (heartbeat {age:.0f} s ago)"


class Lease:
    """``with Lease(path): ...`` holds the lease, refreshing its heartbeat; raises :class:`LeaseBusy`
    (naming the holder) when another host holds it."""

    def __init__(self, path: Path, *, heartbeat_s: float | None = None, stale_s: float | None = None):
        self.path = Path(path)
        self.heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
        self.stale_s = STALE_S if stale_s is None else stale_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "Lease":
        current = read_lease(self.path)
        me = _me()
        if current and current.get("host") != me["host"]:
            age = time.time() - float(current.get("heartbeat", 0))
            if age < self.stale_s:
                raise LeaseBusy(holder_text(current))
            log.warning("%s: taking over the lease of %s, whose heartbeat stopped %.0f s ago (more than %.0f s): "
                        "its run died without releasing it", self.path, holder_text(current), age, self.stale_s)
        self._write()
        if current and current.get("host") != me["host"]:
            time.sleep(SETTLE_S)  # a race only with another host taking the same stale lease: let it land
        back = read_lease(self.path)
        if not back or (back.get("host"), back.get("pid"), back.get("token")) != (me["host"], me["pid"], self._token):
            raise LeaseBusy(holder_text(back) if back else "another host (the lease changed under us)")
        self._thread = threading.Thread(target=self._beat, name="bench-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        lease = read_lease(self.path)
        if lease and lease.get("token") == getattr(self, "_token", None):
            try:
                self.path.unlink()
            except OSError:
                pass

    def _write(self) -> None:
        if not hasattr(self, "_token"):
            self._token = f"{time.time_ns()}-{os.getpid()}"
        write_json_atomic(self.path, {**_me(), "token": self._token, "heartbeat": time.time()})

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._write()
            except OSError as exc:  # a full or vanished disk: the run itself will say so
                log.warning("could not refresh the lease %s (%s)", self.path, exc)


class LeaseBusy(RuntimeError):
    def __init__(self, holder: str):
        self.holder = holder
        super().__init__(f"held by {holder}")
