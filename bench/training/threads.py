"""CPU threads per job when several jobs share one machine.

torch gives every process as many threads as there are cores. Two training processes on one
machine (the local launcher starts every job of a sweep at once; a lab workstation runs two
sweeps) then oversubscribe the cores and can run 10-50x slower than one alone. With
``trainer.num_threads=null`` each job registers itself in ``<paths.cache_dir>/active/`` while it
trains and takes ``cores // (jobs alive)`` threads, re-counted at every epoch, so jobs that
start or finish later rebalance within an epoch. ``trainer.num_threads=N`` fixes the number.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

log = logging.getLogger("bench.train")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a Slurm or cgroup allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class CpuShare:
    """Register this process as a training job on this machine while the block runs."""

    def __init__(self, folder):
        self.folder = Path(folder) / "active"
        self.host = socket.gethostname()
        self.me = self.folder / f"{self.host}-{os.getpid()}"

    def __enter__(self) -> "CpuShare":
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.me.touch()
        except OSError as exc:  # a read-only cache: count this job alone
            log.debug("cannot register in %s: %s", self.folder, exc)
        return self

    def __exit__(self, *exc) -> None:
        self.me.unlink(missing_ok=True)

    def jobs(self) -> int:
        """Live training jobs on this host (this one included); stale entries are removed."""
        count = 1
        try:
            entries = list(self.folder.iterdir())
        except OSError:
            return count
        for entry in entries:
            host, _, pid = entry.name.rpartition("-")
            if host != self.host or entry == self.me or not pid.isdigit():
                continue  # other machines share the cache on a cluster: not our cores
            if _alive(int(pid)):
                count += 1
            else:
                entry.unlink(missing_ok=True)
        return count

    def threads(self, cores: int | None = None) -> int:
        return max(1, (cores or available_cores()) // self.jobs())


    def rebalance(self) -> int:
        """Set torch's threads to this job's share now; logs when it changes. Returns it."""
        import torch

        n = self.threads()
        if n != torch.get_num_threads():
            torch.set_num_threads(n)
            log.info("%d training job(s) on this machine: %d CPU thread(s) for this one", self.jobs(), n)
        return n


class FixedThreads:
    """``trainer.num_threads=N``: N threads, whatever else runs."""

    def __init__(self, n: int):
        self.n = int(n)

    def __enter__(self) -> "FixedThreads":
        import torch

        torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc) -> None:
        pass

    def rebalance(self) -> int:
        return self.n


def thread_policy(num_threads: int | None, cache_dir) -> "CpuShare | FixedThreads":
    """The context that sets a run's CPU threads: fixed, or its share of the machine."""
    if num_threads:
        return FixedThreads(num_threads)
    return CpuShare(Path(cache_dir or ".cache/bench"))
