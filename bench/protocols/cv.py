"""``bench-cv``: cross-validation, one ordinary run per fold, and a summary over the folds.

Two schemes, chosen in the config (usually by the experiment):

* ``cv.folds=K``: stratified K-fold. Fold i is the test set; validation (best-epoch
  selection) is carved per class from the other folds in the train:val ratio of
  ``data.split_fractions``. The folds are disjoint and cover every image
  (:func:`bench.data.split.kfold_assignment`).
* ``cv.repeats=R``: Monte Carlo cross-validation. R independent stratified splits with
  ``cv.test_fraction`` of each class in test (0.3: the 70/30 protocol) and validation
  carved from the rest as above; repetition r seeds its own split.

Each fold is a config composed from the experiment's (``data.split_mode``, ``data.n_folds``,
``data.fold`` set; the ``cv`` keys reset so that they are not part of the run's identity)
with its own experiment folder, so folds never collide and each has the usual run
folders, leaderboard and per-class tables::

    <results_dir>/<experiment>/
        cv_folds.csv                 one row per fold and run: every metric (test macro and per class)
        cv_summary.csv               per model: n_folds, mean and std (ddof=1) of every metric
        kfold10/fold03/              the experiment folder of fold 3 (Monte Carlo: mc30/rep03/)
            manifest-kfold10-fold03.csv
            runs/<model>/seed<seed>/ metrics.json, predictions_*.csv, ... (bench.runs)
            leaderboard.csv, per_class.csv, summary.csv

A fold whose run already completed with the same config is skipped (``train`` reuses
it), so an interrupted cross-validation resumes, and ``cv.fold=i`` runs one fold (e.g.
one per cluster job); the tables always cover every fold finished so far.

With ``two_level.enabled=true`` each fold runs the two-level classifier
(:mod:`bench.protocols.two_level`) instead of one model, and the fold's rows are the
composed end-to-end classifier.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from omegaconf import DictConfig

from bench import runs
from bench.config.plans import FoldPlan, plan_folds, validate_groups
from bench.metrics import MACRO_KEYS, PER_CLASS_KEYS

log = logging.getLogger("bench.cv")

CV_FOLDS_CSV = "cv_folds.csv"
CV_SUMMARY_CSV = "cv_summary.csv"

ID_COLUMNS = ("cv", "fold", "model", "seed", "status", "error")
RUN_INFO_KEYS = ("params_m", "gflops", "epochs", "best_epoch", "train_time_s", "train_img_s", "eval_img_s",
                 "peak_mem_mb", "n_excluded")

COUNT_COLUMNS = ("seed", "n_test", "epochs", "best_epoch", "n_excluded")


# --------------------------------------------------------------------------- running
def run_cv(cfg: DictConfig) -> dict[str, Any]:
    """Run every fold (or only ``cv.fold``), then write cv_folds.csv and cv_summary.csv.

    Returns ``{"results": [per-fold run results], "folds": DataFrame, "summary": DataFrame,
    "exp_dir": Path}``. A failed fold is a row with its error, never an exception.
    """
    plans = plan_folds(cfg)
    if cfg.two_level.enabled:  # a bad grouping is one error now, not a failed run per fold
        validate_groups(cfg.two_level.groups)
    only = cfg.cv.fold
    if only is not None and not 0 <= only < len(plans):
        raise ValueError(f"cv.fold={only} is not a fold of this scheme (0..{len(plans) - 1}).")
    exp_dir = runs.experiment_dir(cfg.paths.results_dir, cfg.experiment_name)
    results = []
    for plan in plans:
        if only is not None and plan.index != only:
            continue
        log.info("%s %d/%d: %s", "two-level" if cfg.two_level.enabled else cfg.model.name, plan.index + 1,
                 len(plans), plan.experiment_name)
        results.append(run_fold(plan.cfg))
        tables = write_cv_tables(exp_dir, plans)  # after every fold: an interrupted run still has a table
    if not results:
        tables = write_cv_tables(exp_dir, plans)
    return {"results": results, **tables, "exp_dir": exp_dir}


def run_fold(fold_cfg: DictConfig) -> dict:
    if fold_cfg.two_level.enabled:
        from bench.protocols.two_level import run_two_level

        return run_two_level(fold_cfg)
    from bench.training import run_training as train

    return train(fold_cfg)


# --------------------------------------------------------------------------- tables
def _num(value: Any) -> float:
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        return math.nan


def fold_row(record, scheme: str, fold: int) -> dict[str, Any]:
    """One row of cv_folds.csv from a leaderboard RunRecord: every metric of the test split
    (overall, macro, and per class ``test_<metric>_<class>``), val accuracy and run info."""
    row: dict[str, Any] = {"cv": scheme, "fold": fold, "model": record.model, "seed": record.seed,
                           "status": record.status, "error": record.error}
    if not record.completed:
        return row
    m = record.metrics
    test = m.get("test") or {}
    row["val_acc"] = _num((m.get("val") or {}).get("accuracy"))
    row["test_acc"] = _num(test.get("accuracy"))
    for key in MACRO_KEYS:
        row[f"test_{key}"] = _num((test.get("macro") or {}).get(key))
    row["n_test"] = _num(test.get("n"))
    for name, scores in (test.get("per_class") or {}).items():
        for key in PER_CLASS_KEYS:
            row[f"test_{key}_{name}"] = _num(scores.get(key))
    for key in RUN_INFO_KEYS:
        row[key] = _num(m.get(key))
    return row


def collect_fold_rows(exp_dir: Path, plans: Sequence[FoldPlan]) -> pd.DataFrame:
    """Rows of every run in every fold folder that exists (all models and seeds run there)."""
    from bench.results.records import collect_runs

    rows = []
    for plan in plans:
        scheme = Path(plan.experiment_name).parent.name
        fold_dir = runs.experiment_dir(plan.cfg.paths.results_dir, plan.experiment_name)
        for record in collect_runs(fold_dir):
            rows.append(fold_row(record, scheme, plan.index))
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=list(ID_COLUMNS))
    lead = [c for c in ID_COLUMNS if c in frame.columns]
    frame = frame[lead + [c for c in frame.columns if c not in lead]]
    for col in frame.columns:  # counts as integers (80, not 80.0), empty where missing
        if col in COUNT_COLUMNS or col.startswith("test_support_"):
            values = pd.to_numeric(frame[col], errors="coerce")
            if ((values.dropna() % 1) == 0).all():
                frame[col] = values.round().astype("Int64")
    return frame.sort_values(["model", "seed", "fold"], kind="mergesort").reset_index(drop=True)


def metric_columns(folds: pd.DataFrame) -> list[str]:
    return [c for c in folds.columns if c not in ID_COLUMNS]


def summarize_folds(folds: pd.DataFrame) -> pd.DataFrame:
    """Per scheme and model: n_folds (completed), n_failed, and ``<metric>_mean`` /
    ``<metric>_std`` of every metric over the completed fold rows (std with ddof=1, empty
    for a single fold)."""
    metrics = metric_columns(folds)
    columns = ["cv", "model", "n_folds", "n_failed", *(f"{c}_{s}" for c in metrics for s in ("mean", "std"))]
    if folds.empty:
        return pd.DataFrame(columns=columns)
    out = []
    for (scheme, model), group in folds.groupby(["cv", "model"], sort=True):
        done = group[group["status"] == runs.STATUS_COMPLETED]
        row: dict[str, Any] = {"cv": scheme, "model": model, "n_folds": len(done),
                               "n_failed": int((group["status"] == runs.STATUS_FAILED).sum())}
        values = done[metrics].apply(pd.to_numeric, errors="coerce")
        for c in metrics:
            row[f"{c}_mean"] = values[c].mean()
            row[f"{c}_std"] = values[c].std(ddof=1)
        out.append(row)
    return pd.DataFrame(out, columns=columns)


def write_cv_tables(exp_dir: Path, plans: Sequence[FoldPlan]) -> dict[str, pd.DataFrame]:
    folds = collect_fold_rows(exp_dir, plans)
    summary = summarize_folds(folds)
    runs.write_csv_atomic(Path(exp_dir) / CV_FOLDS_CSV, folds)
    runs.write_csv_atomic(Path(exp_dir) / CV_SUMMARY_CSV, summary)
    return {"folds": folds, "summary": summary}


def format_summary(summary: pd.DataFrame) -> str:
    lines = []
    for row in summary.itertuples(index=False):
        r = row._asdict()

        def ms(key: str) -> str:
            mean, std = r.get(f"{key}_mean"), r.get(f"{key}_std")
            if mean is None or mean != mean:
                return "-"
            return f"{mean:.4f}" + (f" ± {std:.4f}" if std == std else "")

        lines.append(f"  {r['cv']:<8} {r['model']:<32} folds {r['n_folds']:>2} (failed {r['n_failed']})  "
                     f"test acc {ms('test_acc')}  macro F1 {ms('test_f1')}  val acc {ms('val_acc')}")
    return "\n".join(lines) or "  (no completed fold yet)"


# --------------------------------------------------------------------------- entry point
