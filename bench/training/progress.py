"""A progress bar over one epoch's batches, quiet in log files."""

from __future__ import annotations

import sys
import time


class EpochProgress:
    """A tqdm bar over one epoch's batches (or nothing when trainer.progress=false).

    When stderr is not a terminal (an overnight sweep logging to a file, a Slurm job) the bar
    is redrawn at most every ``LOG_INTERVAL_S`` seconds, so the log shows progress within long
    epochs without thousands of carriage-return lines.
    """

    LOG_INTERVAL_S = 30.0

    def __init__(self, enabled: bool, total: int, desc: str):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            interactive = sys.stderr.isatty()
            self.bar = tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True,
                            mininterval=0.1 if interactive else self.LOG_INTERVAL_S)
        self.start = time.perf_counter()
        self.n = 0
        self.count = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()

    def on_batch(self, info: dict) -> None:
        if self.bar is None:
            return
        self.n += info["n"]
        self.count += 1
        self.bar.update(1)
        if self.count % 10 == 0:  # .item() syncs the GPU; don't do it every batch
            rate = self.n / max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix(loss=f"{info['loss'].item():.3f}", img_s=f"{rate:.0f}", refresh=False)

    def done(self, tr: dict, va: dict) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{tr['loss']:.3f}", acc=f"{tr['acc']:.3f}", val_acc=f"{va['acc']:.3f}",
                                 img_s=f"{tr['img_s']:.0f}")


def duration_text(seconds: float) -> str:
    """``1 h 05 min``, ``3 min 07 s`` or ``42 s``: a time as a person reads it in a log line."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else (f"{minutes} min {secs:02d} s" if minutes else f"{secs} s")
