"""The report's tables as DataFrames: statistics (bootstrap, McNemar), seeds, class-wise accuracy, comparisons."""

from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np
import pandas as pd

from bench.results import leaderboard as lb
from bench.results import rows as leaderboard_rows
from bench.results import published as paper_reference
from bench.results import ranking
from bench import runs
from bench.metrics import statistics as stats
from bench.report.loading import TABLE2_CSV, TABLE3_CSV, ExperimentResults

log = logging.getLogger(__name__)

DEFAULT_TOP = 4
PAPER = "Gavas & Olpadkar 2021"
MACRO_TABLE3 = ("precision", "sensitivity", "specificity")
STATS_COLUMNS = ["rank", "kind", "model", "seed", "label", "val_acc", "test_acc", "n_test", "ci_low", "ci_high",
                 "only_this", "only_best", "p_vs_best", "p_vs_best_holm", "p_vs_ensemble", "p_vs_ensemble_holm",
                 "distinguishable_from_best"]


def statistics_table(res: ExperimentResults, *, n_resamples: int = stats.DEFAULT_RESAMPLES,
                     seed: int = stats.DEFAULT_SEED, confidence: float = stats.DEFAULT_CONFIDENCE,
                     alpha: float = stats.DEFAULT_ALPHA) -> pd.DataFrame:
    """One row per completed run (validation rank order), then the ensembles.

    Columns: rank, kind, model, seed, label, val_acc, test_acc, n_test, ci_low, ci_high
    (percentile bootstrap of test accuracy), only_this / only_best (test images only
    this entry, or only the best run, gets right), p_vs_best, p_vs_ensemble (McNemar
    exact, two-sided) and their Holm-adjusted values over all the comparisons of the column
    (``*_holm``), distinguishable_from_best (p_vs_best_holm < alpha; None for the best
    itself and where there are no comparable predictions). Cached per parameter set.
    """
    key = ("stats", n_resamples, seed, confidence, alpha)
    if key in res._cache:
        return res._cache[key]
    entries = res.entries
    preds = [res.predictions(e) for e in entries]
    rows = [{"rank": e.rank, "kind": e.kind, "model": e.model, "seed": e.seed, "label": e.label,
             "val_acc": e.val_acc, "test_acc": e.test_acc,
             "n_test": len(p.paths) if p is not None else (e.metrics.get("test") or {}).get("n"),
             "ci_low": math.nan, "ci_high": math.nan, "only_this": None, "only_best": None,
             "p_vs_best": math.nan, "p_vs_best_holm": math.nan, "p_vs_ensemble": math.nan,
             "p_vs_ensemble_holm": math.nan, "distinguishable_from_best": None}
            for e, p in zip(entries, preds)]
    _add_bootstrap(rows, preds, n_resamples, confidence, seed)
    _add_mcnemar(rows, preds, entries, best_i=0 if res.best is not None else None,
                 ens_i=entries.index(res.ensemble) if res.ensemble is not None else None)
    # Many models are each compared with the best: correct for the number of comparisons.
    for column in ("p_vs_best", "p_vs_ensemble"):
        for row, adjusted in zip(rows, stats.holm([r[column] for r in rows])):
            row[f"{column}_holm"] = float(adjusted)
    for row in rows:
        if not math.isnan(row["p_vs_best_holm"]):
            row["distinguishable_from_best"] = bool(row["p_vs_best_holm"] < alpha)
    frame = pd.DataFrame(rows, columns=STATS_COLUMNS)
    for col in ("rank", "seed", "n_test", "only_this", "only_best"):
        frame[col] = pd.array(frame[col].tolist(), dtype="Int64")
    res._cache[key] = frame
    return frame


def _add_bootstrap(rows: list[dict], preds, n_resamples: int, confidence: float, seed: int) -> None:
    """Percentile bootstrap of test accuracy; entries on the same images share resamples (one matrix
    product per group), so their intervals are comparable."""
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(preds):
        if p is not None and len(p.paths):
            groups.setdefault((len(p.paths), hash(tuple(p.paths))), []).append(i)
    for members in groups.values():
        ci = stats.bootstrap_accuracy_ci(np.stack([preds[i].correct for i in members]),
                                         n_resamples=n_resamples, confidence=confidence, seed=seed)
        for i, (low, high) in zip(members, ci):
            rows[i]["ci_low"], rows[i]["ci_high"] = float(low), float(high)


def _add_mcnemar(rows: list[dict], preds, entries, *, best_i: int | None, ens_i: int | None) -> None:
    """McNemar's exact test of each entry against the best run and against the ensemble."""
    for i, p in enumerate(preds):
        for ref_i, column in ((best_i, "p_vs_best"), (ens_i, "p_vs_ensemble")):
            if ref_i is None or ref_i == i or p is None or preds[ref_i] is None:
                continue
            if not p.same_images(preds[ref_i]):
                log.warning("%s and %s were tested on different images; no McNemar test", entries[i].key,
                            entries[ref_i].key)
                continue
            result = stats.mcnemar_exact(p.correct, preds[ref_i].correct)
            rows[i][column] = result.pvalue
            if column == "p_vs_best":
                rows[i]["only_this"], rows[i]["only_best"] = result.only_a, result.only_b


def seed_table(res: ExperimentResults) -> pd.DataFrame:
    """Per model: number of completed seeds, mean and standard deviation (ddof=1) of
    validation and test accuracy across seeds, in order of mean validation accuracy."""
    summary = lb.summary_frame(res.board, res.classes)
    cols = ["model", "n_seeds", "val_acc_mean", "val_acc_std", "test_acc_mean", "test_acc_std"]
    return summary[cols].reset_index(drop=True) if len(summary) else pd.DataFrame(columns=cols)


def _per_model_means(res: ExperimentResults, columns: Sequence[str]) -> pd.DataFrame:
    """Completed model rows averaged over seeds, ordered by mean validation accuracy then name."""
    done = res.board[res.board["status"] == runs.STATUS_COMPLETED]
    if done.empty:
        return pd.DataFrame(columns=["model", "val_acc", *columns])
    cols = list(dict.fromkeys(["val_acc", *columns]))
    means = done.groupby("model", sort=True)[cols].mean().reset_index()
    return ranking.by_validation(means)


def class_accuracy_table(res: ExperimentResults) -> pd.DataFrame:
    """Class-wise test accuracy (recall), models x classes plus overall, as fractions;
    one row per model (mean over seeds), then the ensembles. Index: the row label."""
    class_cols = [leaderboard_rows.class_column(c) for c in res.classes]
    means = _per_model_means(res, [*class_cols, "test_acc"])
    table = means.set_index("model")[[*class_cols, "test_acc"]]
    table.columns = [*res.classes, "overall"]
    rows = [table]
    for e in res.ensembles:
        per_class = (e.metrics.get("test") or {}).get("per_class") or {}
        values = [leaderboard_rows._num((per_class.get(c) or {}).get("accuracy")) for c in res.classes] + [e.test_acc]
        rows.append(pd.DataFrame([values], index=[e.label], columns=table.columns))
    out = pd.concat([r for r in rows if len(r)]) if any(len(r) for r in rows) else table
    out.index.name = "model"
    return out.astype(float)


def _reference_key(model: str, names: Sequence[str]) -> str | None:
    """The published row for a model: the same rule as :func:`bench.results.published.paper_accuracy`
    (exact torchvision name, optionally written ``torchvision/<name>``)."""
    if model in names:
        return model
    prefix, _, name = model.rpartition("/")
    return name if prefix == "torchvision" and name in names else None


def _gavas_runs(res: ExperimentResults) -> dict[str, list]:
    """Model -> its runs measured against experiment=gavas2021 (the recipe of the published tables)."""
    out: dict[str, list] = {}
    for e in res.runs:
        if e.recipe == paper_reference.PROTOCOL_RECIPE:
            out.setdefault(e.model, []).append(e)
    return out


def published_class_accuracy(res: ExperimentResults) -> pd.DataFrame | None:
    """The paper's Table 2 rows for the models of this experiment run on its recipe (fractions),
    with ``ours_minus_paper`` (overall) where every seed followed it (NaN otherwise, as the
    leaderboard's paper_diff); None without the reference file or a matching model."""
    table = res.reference_table(TABLE2_CSV)
    if table is None or "model" not in table.columns or "overall" not in table.columns:
        return None
    names = table["model"].astype(str).tolist()
    ours = class_accuracy_table(res)
    gavas = _gavas_runs(res)
    rows = []
    for model in ours.index:
        ref = _reference_key(str(model), names)
        if ref is None or str(model) not in gavas:  # another paper's recipe: Gavas' row is no target
            continue
        paper = table[table["model"].astype(str) == ref].iloc[0]
        row = {c: leaderboard_rows._num(paper.get(c)) for c in [*res.classes, "overall"]}
        followed = all(e.follows_gavas for e in gavas[str(model)])
        row["ours_minus_paper"] = ours.loc[model, "overall"] - row["overall"] if followed else math.nan
        rows.append(pd.Series(row, name=str(model)))
    if not rows:
        return None
    out = pd.DataFrame(rows)
    out.index.name = "model"
    return out


def comparison_table(res: ExperimentResults, top: int = DEFAULT_TOP) -> pd.DataFrame:
    """The paper's Table 3 layout, in percent: accuracy and macro precision, sensitivity,
    specificity on test for the ``top`` models by validation accuracy (mean over seeds),
    the ensembles, and the published rows when the reference table is present and at
    least one of our models is among the published ones."""
    cols = ["accuracy", *MACRO_TABLE3]
    means = _per_model_means(res, ["test_acc", *(f"test_{k}" for k in MACRO_TABLE3)]).head(top)
    rows = [{"source": "this experiment", "model": m["model"], "accuracy": 100 * m["test_acc"],
             **{k: 100 * m[f"test_{k}"] for k in MACRO_TABLE3}} for m in means.to_dict("records")]
    for e in res.ensembles:
        macro = (e.metrics.get("test") or {}).get("macro") or {}
        rows.append({"source": "this experiment", "model": e.label, "accuracy": 100 * e.test_acc,
                     **{k: 100 * leaderboard_rows._num(macro.get(k)) for k in MACRO_TABLE3}})
    table3 = res.reference_table(TABLE3_CSV)
    if table3 is not None and {"method", *cols} <= set(table3.columns) and _any_published_model(res):
        for r in table3.to_dict("records"):
            rows.append({"source": f"published ({PAPER}, Table 3)", "model": str(r["method"]),
                         **{k: leaderboard_rows._num(r[k]) for k in cols}})
    return pd.DataFrame(rows, columns=["source", "model", *cols])


def _published_names(res: ExperimentResults) -> list[str]:
    names: list[str] = []
    for filename, column in ((TABLE2_CSV, "model"), (TABLE3_CSV, "method")):
        table = res.reference_table(filename)
        if table is not None and column in table.columns:
            names += table[column].astype(str).tolist()
    return names


def _any_published_model(res: ExperimentResults) -> bool:
    """A model of the published tables run on their recipe (experiment=gavas2021)."""
    names = _published_names(res)
    return any(_reference_key(e.model, names) for e in res.runs if e.recipe == paper_reference.PROTOCOL_RECIPE)


def published_left_out(res: ExperimentResults) -> dict[str, list[str]]:
    """Recipe -> the runs of a published model that were measured against another paper's recipe,
    whose published Gavas rows the report therefore leaves out."""
    names = _published_names(res)
    out: dict[str, list[str]] = {}
    for e in res.runs:
        if e.recipe != paper_reference.PROTOCOL_RECIPE and _reference_key(e.model, names):
            out.setdefault(e.recipe, []).append(e.label)
    return out


def unfinished_table(res: ExperimentResults) -> pd.DataFrame:
    """Failed and running runs with their error (never dropped from the report)."""
    return res.unfinished.copy()
