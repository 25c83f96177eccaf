"""leaderboard.csv's rows: one per run (ranked, :mod:`bench.results.ranking`), one per ensemble folder.

Each row holds the run's validation and test numbers, per-class test accuracy, what it cost,
``ext_<name>_*`` columns for external test sets (bench-evaluate), the ``protocol`` column and the
published number where the recipe was followed on PBC's classes (:mod:`bench.results.published`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from bench import runs
from bench.metrics import MACRO_KEYS
from bench.results.published import (PROTOCOL_RECIPE, is_pbc_classes, load_reference, paper_accuracy,
                                   protocol_text)
from bench.results.ranking import _rank_rows, by_validation
from bench.results.records import (EXTERNAL_DIR, KIND_DETECTOR, KIND_ENSEMBLE, KIND_MODEL, RunRecord,
                                  _union_classes, main_class_set, metrics_or_none, off_main_classes, read_ensembles,
                                  selected_on)

# A detector's columns (only in leaderboards that have detectors); its class columns hold test AP.
DETECTION_COLUMNS = ("val_map", "test_map", "test_ap50", "test_ap75", "test_ar100", "test_count_error",
                     "score_threshold")

DECIMALS = 6  # enough for accuracies on test sets of up to ~10^6 images

# Columns of leaderboard.csv; the per-class columns go between LEAD and TAIL.
LEAD_COLUMNS = ("rank", "kind", "model", "seed", "status", "val_acc", "test_acc")
TAIL_COLUMNS = (
    *(f"test_{k}" for k in MACRO_KEYS),  # test_precision, _sensitivity, _specificity, _f1
    "test_balanced_acc",
    "val_balanced_acc",
    "val_macro_f1",
    "select_by",  # the validation number that picked the best epoch (trainer.select_by)
    "selected_on",  # an ensemble's members chosen on validation, or on test (method=paper: the paper's four)
    "weights",  # what the network started from: IMAGENET1K_V1 / _V2 / a timm tag / scratch / local:<path>
    "precision",  # fp32 | bf16, as trained
    "params_m",
    "gflops",
    "epochs",
    "best_epoch",
    "train_time_s",
    "train_img_s",
    "eval_img_s",
    "peak_mem_mb",
    "error",
    "warnings",  # e.g. the run predicts one class only (bench.metrics.collapse_warning)
    "protocol",
    "paper_test_acc",
    "paper_diff",
)
# Copied as-is from metrics.json.
RUN_INFO_KEYS = (
    "params_m", "gflops", "epochs", "best_epoch",
    "train_time_s", "train_img_s", "eval_img_s", "peak_mem_mb",
)
INT_COLUMNS = ("rank", "seed", "epochs", "best_epoch")


def _round(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value):
        return round(value, DECIMALS)
    return value


def _thresholds(value: Any) -> Any:
    """A detector's score threshold(s) for one cell: ``rbc=0.25 wbc=0.6`` per class, or one number."""
    if isinstance(value, dict):
        return " ".join(f"{k}={float(v):g}" for k, v in value.items())
    return _num(value)


def _num(value: Any) -> float:
    """A metric value as float, NaN when absent (so missing fields stay empty in CSVs)."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def class_column(name: str) -> str:
    # A class named like a fixed column would overwrite it; such a name gets a prefix.
    return f"test_acc_{name}" if name in LEAD_COLUMNS or name in TAIL_COLUMNS else name


def _as_int_where_integral(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Nullable integers for count-like columns, so the CSV says 3, not 3.0.

    Left alone when a column holds something else (an ensemble row may put text there).
    """
    for col in columns:
        if col not in frame:
            continue
        values = pd.to_numeric(frame[col], errors="coerce")
        original_present = frame[col].notna()
        if values[original_present].isna().any():
            continue
        if ((values.dropna() % 1) == 0).all():
            frame[col] = values.astype("Int64")
    return frame


# The published tables are for the PBC dataset's eight classes; a run on other classes (another
# lab's folder, a subset, grouped classes) is not comparable with them, whatever its model.


def _kind_without_metrics(model: str) -> str:
    """A failed or unfinished run has no metrics.json to say what it was: a detector is one by its
    registry entry's task (so a failed detector is never listed among the classifiers)."""
    from bench.models import get_model_spec

    try:
        return KIND_DETECTOR if get_model_spec(model).task == "detection" else KIND_MODEL
    except Exception:  # a model this process cannot resolve (e.g. an unregistered timm name): a classifier
        return KIND_MODEL


def _model_row(record: RunRecord, classes: Sequence[str], reference: dict[str, float]) -> dict:
    row: dict[str, Any] = {
        "rank": None, "kind": KIND_MODEL, "model": record.model, "seed": record.seed,
        "status": record.status, "val_acc": math.nan, "test_acc": math.nan,
    }
    for name in classes:
        row[class_column(name)] = math.nan
    for key in MACRO_KEYS:
        row[f"test_{key}"] = math.nan
    for key in RUN_INFO_KEYS:
        row[key] = math.nan
    for key in ("test_balanced_acc", "val_balanced_acc", "val_macro_f1"):
        row[key] = math.nan
    row["select_by"] = None
    row["weights"] = None
    row["precision"] = None
    row["error"] = record.error if record.error else None
    row["warnings"] = None
    row["protocol"] = None
    row["paper_test_acc"] = paper_accuracy(record.model, reference)
    row["paper_diff"] = math.nan
    if not record.completed:
        row["kind"] = _kind_without_metrics(record.model)
        return row

    metrics = record.metrics
    test = metrics.get("test") or {}
    row["val_acc"] = _num((metrics.get("val") or {}).get("accuracy"))
    row["test_acc"] = _num(test.get("accuracy"))
    for name, scores in (test.get("per_class") or {}).items():
        row[class_column(str(name))] = _num(scores.get("accuracy"))  # class accuracy = recall
    for key in MACRO_KEYS:
        row[f"test_{key}"] = _num((test.get("macro") or {}).get(key))
    for key in RUN_INFO_KEYS:
        row[key] = _num(metrics.get(key))
    val = metrics.get("val") or {}
    row["test_balanced_acc"] = _num(test.get("balanced_accuracy"))
    row["val_balanced_acc"] = _num(val.get("balanced_accuracy"))
    row["val_macro_f1"] = _num((val.get("macro") or {}).get("f1"))
    row["select_by"] = metrics.get("select_by") or "val_acc"  # runs before trainer.select_by: accuracy
    row["weights"] = metrics.get("weights")
    row["precision"] = metrics.get("precision") or (("bf16" if metrics["amp"] else "fp32") if "amp" in metrics else None)
    row["warnings"] = " ".join(metrics.get("warnings") or []) or None
    if record.root is not None:
        row.update(external_scores(record.root))
    row.update(source_scores(metrics))
    deviations = metrics.get("protocol_deviations")
    row["protocol"] = protocol_text(deviations)
    if metrics.get("recipe", PROTOCOL_RECIPE) != PROTOCOL_RECIPE:  # another paper's recipe: not Table 2's
        row["protocol"] = f"{metrics['recipe']}: {row['protocol']}"
        row["paper_test_acc"] = math.nan
    elif deviations == []:
        row["paper_diff"] = row["test_acc"] - row["paper_test_acc"]
    if metrics.get("task") == "detection":
        _detector_fields(row, metrics)
    return {k: _round(v) for k, v in row.items()}


def _detector_fields(row: dict, metrics: dict) -> None:
    """A detector's numbers: mAP, AP50, AP75, AR@100, count error; per-class test AP in the class columns."""
    val, test = metrics.get("val") or {}, metrics.get("test") or {}
    row.update({"kind": KIND_DETECTOR, "val_map": _num(val.get("map")), "test_map": _num(test.get("map")),
                "test_ap50": _num(test.get("ap50")), "test_ap75": _num(test.get("ap75")),
                "test_ar100": _num(test.get("ar100")), "test_count_error": _num(test.get("count_error")),
                "score_threshold": _thresholds(metrics.get("score_threshold")), "protocol": None})
    for name, ap in (test.get("per_class_ap") or {}).items():
        row[class_column(str(name))] = _num(ap)


def _leaderboard_columns(classes: Sequence[str]) -> list[str]:
    return [*LEAD_COLUMNS, *(class_column(c) for c in classes), *TAIL_COLUMNS]


def source_scores(metrics: dict) -> dict[str, float]:
    """``src_<source>_acc`` and ``src_<source>_balanced_acc`` on the test images of each source (data=multi_source)."""
    out: dict[str, float] = {}
    for source, scores in ((metrics.get("by_source") or {}).get("test") or {}).items():
        out[f"src_{source}_acc"] = _round(_num(scores.get("accuracy")))
        out[f"src_{source}_balanced_acc"] = _round(_num(scores.get("balanced_accuracy")))
    return out


def external_scores(folder: Path) -> dict[str, float]:
    """``ext_<name>_acc``, ``ext_<name>_balanced_acc`` and ``ext_<name>_macro_f1`` of every external test set evaluated
    for a run or an ensemble (bench-evaluate), read from ``<folder>/external/<name>/metrics.json``."""
    out: dict[str, float] = {}
    for path in sorted(Path(folder).glob(f"{EXTERNAL_DIR}/*/metrics.json")):
        metrics = metrics_or_none(path, "external")
        if metrics is None:
            continue
        name = path.parent.name
        out[f"ext_{name}_acc"] = _round(_num(metrics.get("accuracy")))
        out[f"ext_{name}_balanced_acc"] = _round(_num(metrics.get("balanced_accuracy")))
        out[f"ext_{name}_macro_f1"] = _round(_num((metrics.get("macro") or {}).get("f1")))
    return out


def ensemble_row(metrics: dict, columns: Sequence[str]) -> dict:
    """An ensemble's leaderboard row over ``columns`` (+ ``members`` and its external scores)."""
    test, val = metrics["test"], metrics["val"]
    row: dict[str, Any] = {c: math.nan for c in columns}
    row.update({"rank": None, "kind": KIND_ENSEMBLE, "model": metrics.get("name") or metrics["_dir"].name,
                "seed": None, "status": runs.STATUS_COMPLETED, "error": None, "warnings": None,
                "protocol": None, "select_by": None,
                "val_acc": _num(val.get("accuracy")), "test_acc": _num(test.get("accuracy")),
                "test_balanced_acc": _num(test.get("balanced_accuracy")),
                "val_balanced_acc": _num(val.get("balanced_accuracy")),
                "val_macro_f1": _num((val.get("macro") or {}).get("f1"))})
    for cls, scores in (test.get("per_class") or {}).items():
        row[class_column(str(cls))] = _num(scores.get("accuracy"))
    for key in MACRO_KEYS:
        row[f"test_{key}"] = _num((test.get("macro") or {}).get(key))
    for key in ("params_m", "gflops"):
        row[key] = _num(metrics.get(key))
    row.update(external_scores(metrics["_dir"]))
    row["members"] = ";".join(str(m.get("member")) for m in metrics.get("members") or [])
    row["selected_on"] = selected_on(metrics)
    return {k: _round(v) for k, v in row.items()}


def ensemble_rows_frame(exp_dir, columns: Sequence[str]) -> pd.DataFrame | None:
    """One row per ensemble folder, by validation accuracy then name; None without ensembles."""
    rows = [ensemble_row(m, columns) for m in read_ensembles(exp_dir)]
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    return by_validation(frame)


def model_rows_frame(records: Sequence[RunRecord], reference: dict[str, float] | None = None) -> pd.DataFrame:
    """One ranked row per run (kind "model"); runs on another class set than most are unranked."""
    reference = load_reference() if reference is None else reference
    classes = _union_classes([r for r in records if r.completed])
    main = main_class_set(records)
    if classes and not is_pbc_classes(classes):
        reference = {}  # the paper's numbers are for PBC's eight classes: nothing to compare with
    rows = [_model_row(r, classes, reference) for r in records]
    for row, record in zip(rows, records):
        why = off_main_classes(record, main)
        if why:
            row["warnings"] = " ".join(w for w in (row.get("warnings"), why) if w)
            row["_off_main"] = True
    external = sorted({k for row in rows for k in row if k.startswith(("src_", "ext_"))})
    if any(row.get("kind") == KIND_DETECTOR for row in rows):
        external = [*DETECTION_COLUMNS, *external]
    off_main = [bool(row.get("_off_main")) for row in rows]
    frame = pd.DataFrame(rows, columns=[*_leaderboard_columns(classes), *external])
    if len(frame):
        frame = _rank_rows(frame, pd.Series(off_main, index=frame.index))
    return _as_int_where_integral(frame, INT_COLUMNS)


def append_ensemble_rows(frame: pd.DataFrame, ensemble_rows: pd.DataFrame | None) -> pd.DataFrame:
    """Model rows, then the ensemble rows; their extra columns (e.g. "members") go last."""
    if ensemble_rows is None or not len(ensemble_rows):
        return frame
    if not len(frame):  # concat with an empty frame would lose our column order
        extra = [c for c in ensemble_rows.columns if c not in frame.columns]
        return _as_int_where_integral(ensemble_rows.reindex(columns=[*frame.columns, *extra]), INT_COLUMNS)
    return _as_int_where_integral(pd.concat([frame, ensemble_rows], ignore_index=True, sort=False), INT_COLUMNS)
