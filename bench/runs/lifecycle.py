"""RunLifecycle: one run's life in its folder (lock, skip, status, failure row, refresh), defined once."""

from __future__ import annotations

import logging
from typing import Callable

from bench.runs.atomic import remove_stale_temporaries, write_text_atomic
from bench.runs.disk_errors import explain_error
from bench.runs.folder import (STATUS_COMPLETED, STATUS_FAILED, STATUS_RUNNING, RunBusy, RunDir, headline,
                               selection_score)

log = logging.getLogger("bench.runs")


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
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C; a requeue after the scheduler's warning
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
