"""The files a finished run leaves for its readers: ``metrics.json`` and the predictions.

Part of the run contract (:mod:`bench.runs` owns the folder, its status and lifecycle): every
table, report, ensemble and tracker reads a run's results through here, so their format lives
in one module. Writes are atomic (:mod:`bench.runs.atomic`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bench.runs.atomic import atomic_path, read_json, write_csv_atomic, write_json_atomic

log = logging.getLogger("bench.runs")


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
