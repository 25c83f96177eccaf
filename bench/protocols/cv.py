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

import copy
import logging
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from bench import runs
from bench.config import CvConfig
from bench.metrics import MACRO_KEYS, PER_CLASS_KEYS

log = logging.getLogger("bench.cv")

CV_FOLDS_CSV = "cv_folds.csv"
CV_SUMMARY_CSV = "cv_summary.csv"

ID_COLUMNS = ("cv", "fold", "model", "seed", "status", "error")
RUN_INFO_KEYS = ("params_m", "gflops", "epochs", "best_epoch", "train_time_s", "train_img_s", "eval_img_s",
                 "peak_mem_mb", "n_excluded")

COUNT_COLUMNS = ("seed", "n_test", "epochs", "best_epoch", "n_excluded")


@dataclass
class FoldPlan:
    index: int  # fold (k-fold) or repetition (Monte Carlo), 0-based
    experiment_name: str  # <experiment>/kfold10/fold03 or <experiment>/mc30/rep03
    cfg: DictConfig  # the fold's full config


# --------------------------------------------------------------------------- planning
def cv_scheme(cfg: DictConfig) -> tuple[str, int]:
    """("kfold", K) or ("montecarlo", R) from ``cfg.cv``; ValueError naming the fix otherwise."""
    folds, repeats = cfg.cv.folds, cfg.cv.repeats
    if folds and repeats:
        raise ValueError(f"cv.folds={folds} and cv.repeats={repeats} are both set; choose k-fold (cv.folds=K) "
                         "or Monte Carlo cross-validation (cv.repeats=R).")
    if folds:
        if folds < 2:
            raise ValueError(f"cv.folds={folds}: k-fold cross-validation needs at least 2 folds.")
        return "kfold", int(folds)
    if repeats:
        if repeats < 1:
            raise ValueError(f"cv.repeats={repeats} must be at least 1.")
        if not 0 < cfg.cv.test_fraction < 1:
            raise ValueError(f"cv.test_fraction={cfg.cv.test_fraction} must lie strictly between 0 and 1.")
        return "montecarlo", int(repeats)
    raise ValueError("no cross-validation configured: set cv.folds=K (stratified k-fold) or cv.repeats=R "
                     "(Monte Carlo, cv.test_fraction in test), or pick an experiment that sets one.")


def montecarlo_fractions(split_fractions: Sequence[float], test_fraction: float) -> list[float]:
    """Train, val, test fractions: ``test_fraction`` in test, the rest in the train:val ratio of
    ``split_fractions`` (validation carved from the training share for best-epoch selection)."""
    f_train, f_val = float(split_fractions[0]), float(split_fractions[1])
    rest = 1.0 - float(test_fraction)
    return [round(rest * f_train / (f_train + f_val), 10), round(rest * f_val / (f_train + f_val), 10),
            float(test_fraction)]


def scheme_name(cfg: DictConfig) -> str:
    """Folder name of the scheme: ``kfold10`` or ``mc30`` (test percentage)."""
    mode, n = cv_scheme(cfg)
    return f"kfold{n}" if mode == "kfold" else f"mc{100 * cfg.cv.test_fraction:g}"


def plan_folds(cfg: DictConfig) -> list[FoldPlan]:
    """One config per fold / repetition (all of them, also when ``cv.fold`` picks one to run)."""
    mode, n = cv_scheme(cfg)
    name = scheme_name(cfg)
    if cfg.data.kind == "bloodmnist":
        raise ValueError("data=bloodmnist comes with official splits; cross-validation needs data=imagefolder "
                         "(e.g. the PBC folders) or data=synthetic.")
    fractions = (montecarlo_fractions(cfg.data.split_fractions, cfg.cv.test_fraction) if mode == "montecarlo"
                 else list(cfg.data.split_fractions))
    plans = []
    for i in range(n):
        exp_name = f"{cfg.experiment_name}/{name}/{'fold' if mode == 'kfold' else 'rep'}{i:02d}"
        fold_cfg = copy.deepcopy(cfg)
        OmegaConf.update(fold_cfg, "experiment_name", exp_name)
        OmegaConf.update(fold_cfg, "data.split_mode", mode)
        OmegaConf.update(fold_cfg, "data.n_folds", n if mode == "kfold" else None)
        OmegaConf.update(fold_cfg, "data.fold", i)
        OmegaConf.update(fold_cfg, "data.split_fractions", fractions, merge=False)
        # The fold is described by the data keys; the cv keys (how many repetitions, which one to
        # run now) must not change its identity, or e.g. cv.repeats=3 after 2 would redo rep 0 and 1.
        for key, value in asdict(CvConfig()).items():
            OmegaConf.update(fold_cfg, f"cv.{key}", value)
        plans.append(FoldPlan(i, exp_name, fold_cfg))
    return plans


# --------------------------------------------------------------------------- running
def run_cv(cfg: DictConfig) -> dict[str, Any]:
    """Run every fold (or only ``cv.fold``), then write cv_folds.csv and cv_summary.csv.

    Returns ``{"results": [per-fold run results], "folds": DataFrame, "summary": DataFrame,
    "exp_dir": Path}``. A failed fold is a row with its error, never an exception.
    """
    plans = plan_folds(cfg)
    if cfg.two_level.enabled:  # a bad grouping is one error now, not a failed run per fold
        from bench.protocols.two_level import validate_groups

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
    from bench.result_records import collect_runs

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
def main(argv: list[str] | None = None) -> int:
    """``bench-cv experiment=almotairi2019 data.root=/data/PBC`` (any Hydra overrides)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from bench.cli_checks import check_model_overrides, register_requested_timm_models
    from bench.preflight import plan_runs, preflight

    from bench.commands import parser

    args = parser("bench-cv").parse_args(sys.argv[1:] if argv is None else argv)
    if any(a in ("-m", "--multirun") for a in args.overrides):
        print("bench-cv: runs folds one after another; -m sweeps are not supported (run one bench-cv per "
              "model, or cv.fold=i per job).", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    problem = check_model_overrides(args.overrides)
    if problem:
        print(f"bench-cv: {problem}", file=sys.stderr)
        return 2
    register_requested_timm_models(args.overrides)
    try:
        from bench.config import compose_config

        cfg = compose_config(args.overrides)
        report = preflight(plan_runs(args.overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        from bench.cli_checks import compose_hint

        print(f"bench-cv: the configuration does not compose: {compose_hint(args.overrides, exc)}", file=sys.stderr)
        return 2
    print(f"preflight:\n{report.format()}", file=sys.stderr)
    if not report.ok:
        print(f"bench-cv: preflight found {len(report.problems)} problem(s); nothing was trained.", file=sys.stderr)
        return 2
    try:
        if cfg.two_level.enabled and not (cfg.cv.folds or cfg.cv.repeats):
            from bench.protocols.two_level import run_two_level

            result = run_two_level(cfg)  # one two-level classifier on the holdout split
            print(f"two-level classifier: {result['status']} ({result['run_dir']})")
            return 0 if result["status"] != runs.STATUS_FAILED else 1
        out = run_cv(cfg)
    except ValueError as exc:
        print(f"bench-cv: {exc}", file=sys.stderr)
        return 2
    print(f"\nCross-validation summary ({out['exp_dir'] / CV_SUMMARY_CSV}; folds in {CV_FOLDS_CSV}):")
    print(format_summary(out["summary"]))
    failed = [r for r in out["results"] if r.get("status") == runs.STATUS_FAILED]
    for r in failed:
        print(f"  FAILED {r['run_dir']}: {r.get('error')}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
