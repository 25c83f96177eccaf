"""What a run or an ensemble chose on its validation images about its own confidence: the temperature
and the referral threshold (:mod:`bench.metrics.calibration`), read back from its folder."""

from __future__ import annotations

from pathlib import Path

from bench import runs
from bench.runs import files as run_files


def validation_choices(owner: Path) -> tuple[float, float | None, float] | None:
    """(temperature, referral threshold, target accuracy) of a run or ensemble: as recorded in its
    metrics.json, or, for folders written before they were, fitted now on its saved validation
    predictions (the same rule; never on test)."""
    from bench.metrics.calibration import DEFAULT_TARGET_ACC, confidence_record

    path = owner / run_files.METRICS_JSON
    metrics = runs.read_json(path) if path.exists() else {}
    recorded = metrics.get("calibration")
    if recorded:
        return recorded["temperature"], recorded["referral"]["threshold"], recorded["referral"]["target_acc"]
    classes = metrics.get("classes")
    val_path = owner / "predictions_val.csv"
    if not classes or not val_path.exists():
        return None
    _, labels, _, probs = run_files.read_predictions(val_path, classes)
    record = confidence_record({"val": (probs, labels)}, DEFAULT_TARGET_ACC)
    return record["temperature"], record["referral"]["threshold"], DEFAULT_TARGET_ACC
