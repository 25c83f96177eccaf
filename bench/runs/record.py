"""THE metrics.json record: the keys every kind of run writes (a trained classifier, a detector, the
two-level classifier, an SVM on CNN features), built by one function.

Each kind computes its numbers and passes them here by name: a keyword left out is a TypeError at
the first run of that kind, not a column that silently goes missing from the leaderboard. What only
one kind has (a detector's count error, an SVM's folds) follows in ``extra``. A key a kind has no
value for is None (an SVM trains no epochs), never absent, so every reader sees the same keys.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from bench.runs.folder import STATUS_COMPLETED

# The shared keys, in the order metrics.json lists them.
SHARED_KEYS = (
    "experiment", "model", "seed", "task", "status", "classes",
    "epochs", "epochs_run", "best_epoch", "select_by", "warnings",
    "val", "test",
    "params_m", "gflops", "input_size", "trainable_params_m",
    "train_time_s", "train_img_s", "eval_img_s", "peak_mem_mb",
    "batch_size", "grad_accum", "oom_retry", "amp", "channels_last", "precision", "weights",
    "n_excluded", "data_root", "device", "env", "config_hash",
    "recipe", "protocol_deviations",
)


def run_record(*, experiment: str, model: str, seed: int, task: str, classes: Sequence[str],
               epochs: int | None, history: Sequence[dict] | None, best_epoch: int | None, select_by: str,
               warnings: Sequence[str], val: dict, test: dict,
               params_m: float | None, gflops: float | None, input_size: int | None, trainable_params_m: float | None,
               eval_img_s: float | None, peak_mem_mb: float | None,
               batch_size: int | None, grad_accum: int | None, oom_retry: bool | None, amp: bool | None,
               channels_last: bool | None, precision: str | None, weights: str | None,
               n_excluded: int, data_root: str, device: str, env: dict, config_hash: str,
               recipe: str | None, protocol_deviations: list[str] | None,
               train_time_s: float | None = None, **extra: Any) -> dict:
    """The metrics.json record of a completed run. ``history`` (one row per epoch, with ``seconds``
    and ``train_img_s``) gives epochs_run, train_time_s and train_img_s; without epochs (an SVM),
    ``train_time_s`` is given and the epoch keys are None."""
    record = {
        "experiment": experiment, "model": model, "seed": int(seed), "task": task, "status": STATUS_COMPLETED,
        "classes": list(classes),
        "epochs": None if epochs is None else int(epochs),
        "epochs_run": None if history is None else len(history),
        "best_epoch": best_epoch, "select_by": select_by, "warnings": list(warnings),
        "val": val, "test": test,
        "params_m": params_m, "gflops": gflops, "input_size": None if input_size is None else int(input_size),
        "trainable_params_m": trainable_params_m,
        "train_time_s": train_time_s if history is None else sum(h["seconds"] for h in history),
        "train_img_s": None if history is None else _mean(h["train_img_s"] for h in history),
        "eval_img_s": eval_img_s, "peak_mem_mb": peak_mem_mb,
        "batch_size": None if batch_size is None else int(batch_size), "grad_accum": grad_accum,
        "oom_retry": oom_retry, "amp": amp, "channels_last": channels_last, "precision": precision,
        "weights": weights,
        "n_excluded": int(n_excluded), "data_root": str(data_root), "device": str(device), "env": env,
        "config_hash": config_hash,
        # vs. the paper's recipe ([] = follows it; None: no recipe to compare with), and which paper's
        "recipe": recipe, "protocol_deviations": protocol_deviations,
    }
    clash = sorted(set(extra) & set(record))
    if clash:
        raise TypeError(f"run_record: {clash} are shared keys; pass them by name, not in extra")
    return {**record, **extra}


def _mean(values) -> float:
    """The mean of the finite values (NaN when there are none: a speed not measured)."""
    finite = [float(v) for v in values if v is not None and v == v]
    return sum(finite) / len(finite) if finite else math.nan
