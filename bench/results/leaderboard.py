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

Modules (imports only go down): this one (the tables, writing, printing, the CLI) ->
:mod:`bench.results.rows` -> :mod:`bench.results.ranking` and :mod:`bench.results.published` ->
:mod:`bench.results.records` (the run and ensemble folders as records).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd

from bench import runs
from bench.results.rows import (DECIMALS, _as_int_where_integral, _num, _round, append_ensemble_rows,
                                    class_column, ensemble_rows_frame, model_rows_frame)
from bench.metrics import MACRO_KEYS
from bench.results.published import PROTOCOL_FOLLOWED
from bench.results.ranking import by_validation
from bench.results.records import KIND_DETECTOR, RunRecord, _classes_of, _union_classes, collect_runs

log = logging.getLogger(__name__)

LEADERBOARD_CSV = "leaderboard.csv"
PER_CLASS_CSV = "per_class.csv"
SUMMARY_CSV = "summary.csv"
LOCK_FILE = ".leaderboard.lock"
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
