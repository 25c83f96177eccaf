"""The scheduler's warning, held until the epoch in progress ends (issue 28).

Before a time limit or a pre-emption, Slurm (``--signal``) sends SIGUSR2 to the job; submitit's handler
then requeues the job and exits at once, mid-epoch, losing every epoch since the last write of last.pt
(at most every ``trainer.checkpoint_every_s``). :class:`HeldSignal` takes SIGUSR2 for the length of a
training loop and only notes it; the loop asks :attr:`HeldSignal.pending` after each epoch, writes best.pt
and last.pt whatever the cadence, and :meth:`HeldSignal.release` hands the signal on to the handler it
replaced (submitit's requeue), or re-raises it when there was none. The requeued job resumes from the
epoch just written. Slurm's warning comes ``signal_delay_s`` (120 s, conf/hydra/launcher/slurm.yaml)
before the end: an epoch longer than that is lost, as before, and the run resumes from the write before.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger("bench.train")

WARNING_SIGNAL = getattr(signal, "SIGUSR2", None)  # not on Windows: nothing is held there


class HeldSignal:
    """``with HeldSignal() as held: ...``: SIGUSR2 noted, not acted on, until :meth:`release`."""

    def __init__(self):
        self.pending: int | None = None
        self.previous = None
        self.installed = False

    def __enter__(self) -> "HeldSignal":
        # Only the main thread may set handlers (a run started from a worker thread keeps the old behaviour).
        if WARNING_SIGNAL is not None and threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(WARNING_SIGNAL, self._note)
            self.installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self.installed:
            signal.signal(WARNING_SIGNAL, self.previous)
            self.installed = False

    def _note(self, signum, frame) -> None:
        if self.pending is None:
            log.warning("the scheduler's warning (signal %d) arrived: the epoch in progress finishes, then best.pt "
                        "and last.pt are written and the job is handed back to be requeued", signum)
        self.pending = signum

    def release(self) -> None:
        """Hand the held signal on: to the handler replaced (submitit requeues and exits), else as the
        default action (the process ends; last.pt is on disk)."""
        signum, self.pending = self.pending, None
        if signum is None:
            return
        previous = self.previous
        self.__exit__()
        if callable(previous):
            previous(signum, None)
        elif previous != signal.SIG_IGN:
            os.kill(os.getpid(), signum)  # the default action, with our handler gone
