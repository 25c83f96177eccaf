"""bench-predict's tables: predictions.csv and counts.csv from the members' probabilities, and the
validation record (low-confidence threshold, per-class recall) they are read against."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from bench.runs import files as run_files
from bench.ensemble.voting import HARD, combine, confidence_of


@dataclass
class ValidationRecord:
    """What the model(s) did on their validation data, for reading new predictions honestly:
    the low-confidence threshold chosen there and the recall of each class. Empty (with
    ``why``) when no record applies to this combination of checkpoints and voting."""

    threshold: float | None = None
    rule: str | None = None
    recall: dict[str, float] | None = None
    source: str | None = None
    why: str | None = None


def validation_record(checkpoints: Sequence[Path], ensemble_dir: Path | None, voting: str,
                      class_names: Sequence[str]) -> ValidationRecord:
    """The record of one checkpoint (its run's metrics.json) or of one ensemble (its metrics.json)."""
    if ensemble_dir is not None and not checkpoints:
        source, kind = Path(ensemble_dir) / "metrics.json", "vote_share" if voting == HARD else "probability"
    elif ensemble_dir is None and len(checkpoints) == 1:
        source, kind = Path(checkpoints[0]).parent / "metrics.json", "probability"
        if voting == HARD:
            return ValidationRecord(why="one checkpoint by majority vote: its vote share is always 1")
    else:
        return ValidationRecord(why="these checkpoints were never validated together (no ensemble folder)")
    try:
        metrics = run_files.read_metrics(source, "ensemble" if ensemble_dir is not None and not checkpoints else "run")
    except (OSError, ValueError):
        return ValidationRecord(why=f"no readable {source} beside the model")
    if [str(c) for c in metrics.get("classes") or []] != list(class_names):
        return ValidationRecord(why=f"{source} is for other classes")
    per_class = (metrics.get("val") or {}).get("per_class") or {}
    recall = {c: float(per_class[c]["sensitivity"]) for c in class_names if c in per_class}
    found = metrics.get("confidence_threshold") or {}
    if found.get("kind", "probability") != kind or "value" not in found:
        return ValidationRecord(recall=recall or None, source=str(source),
                                why=f"{source} has no {kind} threshold (written by an older bench, or another voting)")
    return ValidationRecord(float(found["value"]), found.get("rule"), recall or None, str(source))


def prediction_tables(paths: Sequence[str], probs: np.ndarray, class_names: Sequence[str], voting: str,
                      weights: Sequence[float] | None = None,
                      record: ValidationRecord | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """predictions.csv and counts.csv frames from member probabilities (M, N, C)."""
    record = record or ValidationRecord()
    n = probs.shape[1]
    if n:
        comb = combine(probs, weights, voting)
        pred, votes, proba = comb.pred, comb.votes, comb.proba
        confidence = confidence_of(comb, voting)
    else:
        pred, votes, proba = np.zeros(0, int), np.zeros((0, len(class_names))), np.zeros((0, len(class_names)))
        confidence = np.zeros(0)
    low = confidence < record.threshold if record.threshold is not None else None
    frame = pd.DataFrame({"path": list(paths), "predicted": [class_names[i] for i in pred],
                          "confidence": np.round(confidence, 6),
                          "low_confidence": low if low is not None else pd.Series([None] * n, dtype=object)})
    if voting == HARD:
        integral = np.allclose(votes, np.round(votes))
        for j, c in enumerate(class_names):
            frame[f"votes_{c}"] = np.round(votes[:, j]).astype(int) if integral else votes[:, j].round(6)
    for j, c in enumerate(class_names):
        frame[f"prob_{c}"] = proba[:, j].round(6)
    counts = np.bincount(pred, minlength=len(class_names))
    percent = counts / n * 100 if n else np.zeros(len(class_names))
    count_frame = pd.DataFrame({"class": list(class_names), "count": counts, "percent": np.round(percent, 2)})
    # Beside each count: how many of those images the model was unsure of, and how often it finds
    # that class on its validation data (a class it finds half the time is undercounted here too).
    count_frame["n_low_confidence"] = (np.bincount(pred[low], minlength=len(class_names)) if low is not None
                                       else pd.array([pd.NA] * len(class_names), dtype="Int64"))
    count_frame["val_recall"] = [round(record.recall[c], 4) if record.recall and c in record.recall else np.nan
                                 for c in class_names]
    return frame, count_frame
