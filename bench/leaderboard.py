"""Collect the run folders of one experiment into ranked tables.

``bench-leaderboard results/<experiment>`` (or :func:`write_leaderboard`) writes,
next to ``runs/``::

    leaderboard.csv   one row per run (kind "model"), ranked by VALIDATION accuracy (or the
                      runs' trainer.select_by), then one row per ensemble folder (kind
                      "ensemble"); ext_<name>_* columns for external test sets (bench-evaluate).
                      Rebuilt from the folders every time, never from its own previous contents.
    per_class.csv     long format: model, seed, split, class, accuracy, precision,
                      specificity, f1, support (val and test of completed runs)
    summary.csv       per model: n_seeds, mean and std over seeds (always written;
                      std is empty for a model with a single completed seed)

Ranking never looks at test numbers: choosing or ordering models by test accuracy
would leak the test set into model selection. Ties on validation accuracy are
broken by model name, then seed, so the order is deterministic. Failed and running
runs have no rank and come after the ranked rows.

Concurrency: several sweeps may write into one experiment at once. Every file is
written atomically (``bench.runs``), and reading tolerates a run caught mid-way: a
``completed`` status whose ``metrics.json`` is not there (yet) counts as running, an
unreadable ``status.json`` is skipped with a warning. The scan and the write happen
under an advisory lock (:func:`leaderboard_lock`) so that the last writer has seen
every run finished before it started; without it a slow writer could replace a
newer leaderboard with an older snapshot.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd

import bench
from bench import runs
from bench import run_files
from bench.metrics import MACRO_KEYS

log = logging.getLogger(__name__)

LEADERBOARD_CSV = "leaderboard.csv"
PER_CLASS_CSV = "per_class.csv"
SUMMARY_CSV = "summary.csv"
LOCK_FILE = ".leaderboard.lock"

STATUS_UNREADABLE = "unreadable"  # completed, but its metrics.json cannot be read
KIND_MODEL = "model"
KIND_ENSEMBLE = "ensemble"
KIND_DETECTOR = "detector"  # a detection run: mAP where classifiers have accuracy
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
# protocol column: how the run differs from the paper's recipe (bench.protocol); paper_diff is
# only filled for runs that follow it, since any other difference is not a replication.
PROTOCOL_FOLLOWED = "paper"
PROTOCOL_RECIPE = "gavas2021"  # the paper whose Table 2 gives paper_test_acc
PROTOCOL_UNKNOWN = "unknown"
# Copied as-is from metrics.json.
RUN_INFO_KEYS = (
    "params_m", "gflops", "epochs", "best_epoch",
    "train_time_s", "train_img_s", "eval_img_s", "peak_mem_mb",
)
INT_COLUMNS = ("rank", "seed", "epochs", "best_epoch")
PER_CLASS_COLUMNS = ("model", "seed", "split", "class", "accuracy", "precision", "specificity", "f1", "support")
PER_CLASS_SPLITS = ("val", "test")
DETECTOR_FORMAT_COLUMNS = (
    ("rank", "rank"), ("model", "model"), ("seed", "seed"), ("status", "status"), ("val_map", "val_mAP"),
    ("test_map", "test_mAP"), ("test_ap50", "AP50"), ("test_count_error", "count_err"), ("params_m", "params_m"),
    ("gflops", "gflops"), ("train_img_s", "img/s"), ("train_time_s", "train_time_s"),
)
FORMAT_COLUMNS = (
    ("rank", "rank"), ("model", "model"), ("seed", "seed"), ("status", "status"),
    ("val_acc", "val_acc"), ("test_acc", "test_acc"), ("test_f1", "macro_f1"),
    ("params_m", "params_m"), ("train_time_s", "train_time_s"),
)


def reference_dir() -> Path:
    """The published tables (``bench/reference``, package data): found from the package, so an
    installed wheel and any working directory see them."""
    return bench.REFERENCE_DIR


# --------------------------------------------------------------------------- reading runs
@dataclass
class RunRecord:
    """What the leaderboard needs from one run folder."""

    model: str
    seed: int | None
    status: str
    error: str | None = None
    metrics: dict = field(default_factory=dict)  # empty unless completed
    root: Path | None = None  # the run folder
    @property
    def completed(self) -> bool:
        return self.status == runs.STATUS_COMPLETED


def _model_seed_from_path(run_dir: runs.RunDir) -> tuple[str, int | None]:
    # The folder name is the fallback identity: model_dirname() turned "/" into "--".
    model = run_dir.root.parent.name.replace("--", "/")
    seed_text = run_dir.root.name.removeprefix("seed")
    return model, int(seed_text) if seed_text.lstrip("-").isdigit() else None


def _read_json_or_none(path: Path, what: str) -> Any | None:
    """A JSON file, or None with a warning if it cannot be read or parsed."""
    try:
        return runs.read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # ValueError covers JSON and Unicode decode errors
        log.warning("skipping unreadable %s %s: %s", what, path, exc)
        return None


def _metrics_or_none(path: Path, kind: str) -> dict | None:
    """An ensemble's or external evaluation's metrics.json, or None with a warning naming it."""
    try:
        return run_files.read_metrics(path, kind)
    except FileNotFoundError:
        return None
    except (OSError, run_files.UnreadableMetrics) as exc:
        log.warning("skipping the %s at %s: %s", kind, path.parent, exc)
        return None


def read_run(run_dir: runs.RunDir) -> RunRecord | None:
    """One run folder as a record; None if its status file cannot be read."""
    status = _read_json_or_none(run_dir.status, "status file")
    if status is None:  # unreadable (already warned) or removed since the folder scan
        return None
    if not isinstance(status, dict) or "status" not in status:
        log.warning("skipping run %s: status.json has no 'status' field", run_dir.root)
        return None
    model, seed = _model_seed_from_path(run_dir)
    model = status.get("model") or model
    seed = status.get("seed", seed)
    state = str(status["status"])
    error = status.get("error")
    if state != runs.STATUS_COMPLETED:
        return RunRecord(model, seed, state, error)
    # status.json is the authority; metrics.json may lag behind it (another process
    # is writing it, or it was deleted), and then the run is not finished for us.
    try:
        metrics = run_files.read_metrics(run_dir.root)
    except FileNotFoundError:
        return RunRecord(model, seed, runs.STATUS_RUNNING, error)
    except (OSError, run_files.UnreadableMetrics) as exc:
        # Writes are atomic, so this is damage, not a write in progress: say so, by path.
        log.warning("%s", exc)
        return RunRecord(model, seed, STATUS_UNREADABLE,
                         f"{run_dir.metrics} is unreadable; rerun the same command to evaluate the run again "
                         "from its checkpoints and rewrite it", root=run_dir.root)
    return RunRecord(metrics.get("model") or model, metrics.get("seed", seed), state, error, metrics, run_dir.root)


def collect_runs(exp_dir) -> list[RunRecord]:
    """Every readable run of an experiment, in folder order."""
    records = []
    for run_dir in runs.iter_run_dirs(exp_dir):
        record = read_run(run_dir)
        if record is not None:
            records.append(record)
    return records


# --------------------------------------------------------------------------- helpers
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


def _classes_of(metrics: dict) -> list[str]:
    classes = metrics.get("classes")
    if classes:
        return [str(c) for c in classes]
    return list(metrics.get("test", {}).get("per_class", {}))


def _union_classes(records: Sequence[RunRecord]) -> list[str]:
    """All class names in order of first appearance (runs of one experiment share them)."""
    seen: dict[str, None] = {}
    for record in records:
        for name in _classes_of(record.metrics):
            seen.setdefault(name, None)
    return list(seen)


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
PBC_CLASSES = frozenset({"basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil",
                         "platelet"})


def is_pbc_classes(classes: Sequence[str]) -> bool:
    """Whether ``classes`` are PBC's eight (case and order aside): the published numbers apply."""
    return len(classes) == len(PBC_CLASSES) and {str(c).lower() for c in classes} == PBC_CLASSES


def load_reference(path: Path | None = None) -> dict[str, float]:
    """Model name -> overall test accuracy from Gavas & Olpadkar 2021, Table 2; {} if absent."""
    path = path or reference_dir() / "gavas2021_table2.csv"
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        log.debug("no reference table at %s: %s", path, exc)
        return {}
    if not {"model", "overall"} <= set(table.columns):
        log.warning("reference table %s lacks 'model'/'overall' columns; ignoring it", path)
        return {}
    return {str(m): float(a) for m, a in zip(table["model"], table["overall"])}


def paper_accuracy(model: str, reference: dict[str, float]) -> float:
    """The paper's test accuracy for a model name, NaN if the paper has no such model.

    Only exact torchvision names match (optionally written ``torchvision/<name>``):
    e.g. ``timm/resnet18`` is a different implementation and must not borrow the number.
    """
    if model in reference:
        return reference[model]
    prefix, _, name = model.rpartition("/")
    if prefix == "torchvision" and name in reference:
        return reference[name]
    return math.nan


# --------------------------------------------------------------------------- leaderboard rows
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


def protocol_text(deviations: list[str] | None) -> str:
    """The protocol column: "paper", the deviations joined by "; ", or "unknown"."""
    if deviations is None:
        return PROTOCOL_UNKNOWN
    return "; ".join(deviations) if deviations else PROTOCOL_FOLLOWED


def rank_key(frame: pd.DataFrame) -> str:
    """The column the leaderboard ranks by: the runs' ``select_by`` (the validation number their
    best epoch was chosen by) when they all agree, else plain validation accuracy."""
    done = frame[frame["status"] == runs.STATUS_COMPLETED] if "status" in frame else frame
    keys = set(done["select_by"].dropna()) if "select_by" in done else set()
    if len(keys) == 1 and (key := keys.pop()) in done:
        return key
    if len(keys) > 1:
        log.warning("runs were selected by different trainer.select_by (%s); ranking by val_acc", sorted(keys))
    return "val_acc"


RANK_NAMES = {"val_acc": "validation accuracy", "val_balanced_acc": "validation balanced accuracy",
              "val_macro_f1": "validation macro F1", "val_map": "validation mAP"}


def ranking_text(board: pd.DataFrame) -> str:
    """``ranked by validation accuracy`` (or the rank key in words), for printed headers."""
    models = board[board["kind"].isin([KIND_MODEL, KIND_DETECTOR])] if "kind" in board else board
    return f"ranked by {RANK_NAMES[rank_key(models)]}" if len(models) else "ranked by validation accuracy"


def by_validation(frame: pd.DataFrame, key: str = "val_acc") -> pd.DataFrame:
    """The one ranking order: ``key`` (a validation number) descending, then model name, then seed
    (numeric); stable, so equal rows keep their order. Test numbers never order anything."""
    frame = frame.copy()
    frame["_seed_key"] = pd.to_numeric(frame["seed"], errors="coerce") if "seed" in frame else 0
    ordered = frame.sort_values([key, "model", "_seed_key"], ascending=[False, True, True], kind="mergesort")
    return ordered.drop(columns="_seed_key").reset_index(drop=True)


def _rank_rows(frame: pd.DataFrame, off_main: pd.Series | None = None) -> pd.DataFrame:
    """Order: ranked runs by the rank key (:func:`rank_key`, desc), then model, seed; unranked runs
    (not completed, or trained on another class set: ``off_main``) after them."""
    key = rank_key(frame)
    rankable = (frame["status"] == runs.STATUS_COMPLETED) & frame[key].notna()
    if off_main is not None:
        rankable &= ~off_main
    ranked = by_validation(frame[rankable], key)
    ranked["rank"] = range(1, len(ranked) + 1)
    rest = frame[~rankable].copy()
    rest["_seed_key"] = pd.to_numeric(rest["seed"], errors="coerce")
    rest = rest.sort_values(["model", "_seed_key"], kind="mergesort").drop(columns="_seed_key")
    rest["rank"] = None
    parts = [p for p in (ranked, rest) if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else frame


def _leaderboard_columns(classes: Sequence[str]) -> list[str]:
    return [*LEAD_COLUMNS, *(class_column(c) for c in classes), *TAIL_COLUMNS]


ENSEMBLES_DIR = "ensembles"  # <exp>/ensembles/<name>/metrics.json, written by bench-ensemble
EXTERNAL_DIR = "external"  # <run or ensemble>/external/<name>/metrics.json, written by bench-evaluate


def external_scores(folder: Path) -> dict[str, float]:
    """``ext_<name>_acc`` and ``ext_<name>_balanced_acc`` of every external test set evaluated
    for a run or an ensemble (bench-evaluate), read from ``<folder>/external/<name>/metrics.json``."""
    out: dict[str, float] = {}
    for path in sorted(Path(folder).glob(f"{EXTERNAL_DIR}/*/metrics.json")):
        metrics = _metrics_or_none(path, "external")
        if metrics is None:
            continue
        name = path.parent.name
        out[f"ext_{name}_acc"] = _round(_num(metrics.get("accuracy")))
        out[f"ext_{name}_balanced_acc"] = _round(_num(metrics.get("balanced_accuracy")))
    return out


def read_ensembles(exp_dir) -> list[dict]:
    """The metrics.json of every finished ensemble of an experiment, by name."""
    found = []
    for path in sorted((Path(exp_dir) / ENSEMBLES_DIR).glob("*/metrics.json")):
        metrics = _metrics_or_none(path, "ensemble")
        if metrics is not None:
            found.append({**metrics, "_dir": path.parent})
    return found


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
    return {k: _round(v) for k, v in row.items()}


def ensemble_rows_frame(exp_dir, columns: Sequence[str]) -> pd.DataFrame | None:
    """One row per ensemble folder, by validation accuracy then name; None without ensembles."""
    rows = [ensemble_row(m, columns) for m in read_ensembles(exp_dir)]
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    return by_validation(frame)


def main_class_set(records: Sequence[RunRecord]) -> tuple[str, ...] | None:
    """The classes most completed runs of an experiment were trained on (ties: more classes, then
    the first seen). Runs on other classes (a subset, a grouping) are not ranked against them."""
    counts: dict[tuple[str, ...], int] = {}
    for record in records:
        if record.completed:
            key = tuple(_classes_of(record.metrics))
            counts[key] = counts.get(key, 0) + 1
    if not counts:
        return None
    return max(counts, key=lambda k: (counts[k], len(k)))


def off_main_classes(record: RunRecord, main: tuple[str, ...] | None) -> str | None:
    """Why a completed run is not ranked with the others (its classes differ), or None."""
    classes = tuple(_classes_of(record.metrics))
    if main is None or not record.completed or classes == main:
        return None
    return (f"trained on other classes ({', '.join(classes)}) than most runs here ({', '.join(main)}): "
            "not ranked or ensembled with them; give such runs their own experiment_name.")


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
    external = sorted({k for row in rows for k in row if k.startswith("ext_")})
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


def build_leaderboard(exp_dir) -> pd.DataFrame:
    """The leaderboard of ``exp_dir`` as a DataFrame (see the module docstring): rebuilt from the run
    and ensemble folders every time, never from the previous leaderboard.csv."""
    models = model_rows_frame(collect_runs(exp_dir))
    return append_ensemble_rows(models, ensemble_rows_frame(exp_dir, list(models.columns)))


# --------------------------------------------------------------------------- per-class and summary
def per_class_frame(records: Sequence[RunRecord]) -> pd.DataFrame:
    """Long table of per-class metrics on val and test, one row per run, split and class."""
    rows = []
    for record in records:
        if not record.completed:
            continue
        for split in PER_CLASS_SPLITS:
            per_class = (record.metrics.get(split) or {}).get("per_class") or {}
            for name in _classes_of(record.metrics) or list(per_class):
                scores = per_class.get(name)
                if scores is None:
                    continue
                rows.append({
                    "model": record.model, "seed": record.seed, "split": split, "class": name,
                    **{k: _round(_num(scores.get(k))) for k in ("accuracy", "precision", "specificity", "f1")},
                    "support": scores.get("support"),
                })
    frame = pd.DataFrame(rows, columns=list(PER_CLASS_COLUMNS))
    return _as_int_where_integral(frame, ("seed", "support"))


def summary_frame(model_rows: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Mean and std (ddof=1) over seeds per model, from the completed model rows.

    Built from the leaderboard rows so both files always agree. Written for every
    model, also one with a single seed (std empty), so that summary.csv always exists
    with the same columns. Sorted by mean val_acc, then model.
    """
    done = model_rows[model_rows["status"] == runs.STATUS_COMPLETED]
    values = ["val_acc", "test_acc", *(f"test_{k}" for k in MACRO_KEYS), *(class_column(c) for c in classes)]
    columns = ["model", "n_seeds", *(f"{v}_{s}" for v in values for s in ("mean", "std")),
               "paper_test_acc", "paper_diff"]
    if done.empty:
        return pd.DataFrame(columns=columns)
    grouped = done.groupby("model", sort=True)
    mean, std = grouped[values].mean(), grouped[values].std()  # pandas std: ddof=1, NaN for one seed
    out = pd.DataFrame({"model": mean.index, "n_seeds": grouped.size().values})
    for v in values:
        out[f"{v}_mean"] = mean[v].values
        out[f"{v}_std"] = std[v].values
    out["paper_test_acc"] = grouped["paper_test_acc"].first().values
    # Only when every seed followed the paper's recipe (see the protocol column).
    followed = grouped["protocol"].agg(lambda s: bool((s == PROTOCOL_FOLLOWED).all())).values
    out["paper_diff"] = (out["test_acc_mean"] - out["paper_test_acc"]).where(followed)
    return by_validation(out, "val_acc_mean").round(DECIMALS)[columns]


# --------------------------------------------------------------------------- writing
@contextlib.contextmanager
def leaderboard_lock(exp_dir) -> Iterator[None]:
    """Exclusive advisory lock on ``<exp_dir>/.leaderboard.lock`` (no-op where fcntl is missing).

    Hold it around read-modify-write of leaderboard.csv (the ensemble code should too),
    so two writers cannot interleave scan and write and lose each other's rows.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: atomic writes still prevent corruption
        yield
        return
    Path(exp_dir).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(exp_dir) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def write_leaderboard(exp_dir) -> pd.DataFrame:
    """Write leaderboard.csv, per_class.csv and summary.csv atomically (rebuilt from the run and
    ensemble folders, never from the previous tables); return the leaderboard."""
    exp_dir = Path(exp_dir)
    with leaderboard_lock(exp_dir):
        records = collect_runs(exp_dir)
        model_rows = model_rows_frame(records)
        classes = _union_classes([r for r in records if r.completed])
        board = append_ensemble_rows(model_rows, ensemble_rows_frame(exp_dir, list(model_rows.columns)))
        runs.write_csv_atomic(exp_dir / PER_CLASS_CSV, per_class_frame(records))
        runs.write_csv_atomic(exp_dir / SUMMARY_CSV, summary_frame(model_rows, classes))
        # Last, so a reader that sees the new leaderboard also finds the matching files.
        runs.write_csv_atomic(exp_dir / LEADERBOARD_CSV, board)
    return board


# --------------------------------------------------------------------------- printing
def _cell(value: Any, column: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "-"
    if column in ("val_acc", "test_acc", "test_f1", "val_map", "test_map", "test_ap50"):
        return f"{float(value):.4f}"
    if column == "test_count_error":
        return f"{float(value):.2f}"
    if column in ("params_m", "gflops"):
        return f"{float(value):.2f}"
    if column in ("train_time_s", "train_img_s"):
        return f"{float(value):.1f}"
    return str(value)


def refresh_leaderboard(exp_dir) -> None:
    """:func:`write_leaderboard` as a run's last step: a failure here is logged, never fails the run."""
    try:
        write_leaderboard(exp_dir)
    except Exception as exc:  # the table is a convenience; the run's own files are what count
        log.warning("could not update the leaderboard of %s: %s", exp_dir, exc)


def format_leaderboard(df: pd.DataFrame, max_rows: int | None = None) -> str:
    """A compact text table: rank, model, seed, status, val/test accuracy, macro F1, size, time."""
    shown = df if max_rows is None else df.head(max_rows)
    done = df[df["status"] == runs.STATUS_COMPLETED] if "status" in df else df
    detectors = "kind" in df and len(done) and bool((done["kind"] == KIND_DETECTOR).all())
    columns = DETECTOR_FORMAT_COLUMNS if detectors else FORMAT_COLUMNS
    header = [title for _, title in columns]
    body = [[_cell(row.get(col), col) for col, _ in columns] for row in shown.to_dict("records")]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    numeric = {"rank", "seed", "val_acc", "test_acc", "macro_f1", "params_m", "train_time_s", "val_mAP", "test_mAP",
               "AP50", "count_err", "gflops", "img/s"}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if h in numeric else c.ljust(w)
                         for c, w, h in zip(cells, widths, header)).rstrip()

    lines = [line(header), line(["-" * w for w in widths]), *(line(r) for r in body)]
    if not body:
        lines.append("(no runs)")
    if len(df) > len(shown):
        lines.append(f"... {len(df) - len(shown)} more rows")
    if "warnings" in df.columns:
        warned = df[df["warnings"].notna() & (df["warnings"].astype(str) != "")]
        if len(warned):
            names = ", ".join(f"{r['model']}" + (f"/seed{int(r['seed'])}" if pd.notna(r.get("seed")) else "")
                              for r in warned.to_dict("records"))
            lines.append(f"{len(warned)} run(s) with a warning ({names}): read it in leaderboard.csv's warnings "
                         "column before their numbers.")
    if {"protocol", "paper_test_acc"} <= set(df.columns):
        done = df[(df["status"] == runs.STATUS_COMPLETED) & df["paper_test_acc"].notna()]
        departing = int((done["protocol"] != PROTOCOL_FOLLOWED).sum())
        if departing:
            lines.append(f"{departing} run(s) of models the paper trained depart from its protocol: their "
                         "paper_diff is left empty (the protocol column of leaderboard.csv says how).")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    from bench.commands import parser

    args = parser("bench-leaderboard").parse_args(argv)

    if not (args.exp_dir / "runs").is_dir():
        print(
            f"bench-leaderboard: {args.exp_dir} has no runs/ folder, so there is nothing to rank. "
            "Pass an experiment folder as written by bench-train, i.e. one that contains "
            "runs/<model>/seed<seed>/status.json (for example results/<experiment>), "
            "and check that at least one run of that experiment has started.",
            file=sys.stderr,
        )
        return 2
    board = write_leaderboard(args.exp_dir)
    print(format_leaderboard(board, max_rows=args.max_rows))
    print(f"\nwrote {LEADERBOARD_CSV}, {PER_CLASS_CSV} and {SUMMARY_CSV} in {args.exp_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
