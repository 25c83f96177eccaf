"""A readable report of one experiment: tables, figures and honest statistics.

``bench-report results/<experiment>`` (or :func:`build_report`) reads the run folders
and ensembles of an experiment (nothing is trained or evaluated again) and writes::

    <experiment>/report/
        report.md                    Markdown with pipe tables, linking the figures below
        test_accuracy_ci.png         test accuracy with 95% bootstrap intervals, in rank order
        class_accuracy.png           class-wise test accuracy, models x classes (heatmap)
        accuracy_vs_gflops.png       test accuracy against compute, Pareto front marked
        accuracy_vs_train_time.png   test accuracy against training time, Pareto front marked
        confusion_best.png           counts and row percentages, best single model
        confusion_ensemble.png       the same for the ensemble (if there is one)
        training_curves.png          loss and accuracy per epoch, train and validation, top models

Selection never looks at test data: "best" is the run ranked first by *validation*
accuracy (the leaderboard's rank, :mod:`bench.leaderboard`), "the ensemble" is the
ensemble with the highest validation accuracy, "top models" are the first by validation
accuracy, and the Pareto front is computed on validation accuracy. Test numbers are
only reported, with their uncertainty (:mod:`bench.stats`): a percentile-bootstrap 95%
interval per run and McNemar's exact test of every run against the best run and
against the ensemble, all on the saved per-image test predictions.

The same pieces are public for the notebook (``notebooks/leaderboard.ipynb``):
:func:`load_results` gives an :class:`ExperimentResults`, and the ``*_table`` and
``plot_*`` functions return DataFrames and matplotlib Figures. Figures are drawn with
the object-oriented API on the Agg canvas (no pyplot, no display needed).
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from bench import ensemble as ens
from bench import leaderboard as lb
from bench import runs, stats

log = logging.getLogger(__name__)

REPORT_DIR = "report"
REPORT_MD = "report.md"
DEFAULT_TOP = 4
DPI = 110
TABLE2_CSV = "gavas2021_table2.csv"
TABLE3_CSV = "gavas2021_table3.csv"
PAPER = "Gavas & Olpadkar 2021"
PBC_CITATION = "Acevedo et al., Data in Brief 30 (2020) 105474, CC BY 4.0"
PBC_CLASSES = {"basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"}
MACRO_TABLE3 = ("precision", "sensitivity", "specificity")

FIGURES = {
    "ci": "test_accuracy_ci.png",
    "classes": "class_accuracy.png",
    "gflops": "accuracy_vs_gflops.png",
    "time": "accuracy_vs_train_time.png",
    "cm_best": "confusion_best.png",
    "cm_ensemble": "confusion_ensemble.png",
    "curves": "training_curves.png",
}
STATS_COLUMNS = ["rank", "kind", "model", "seed", "label", "val_acc", "test_acc", "n_test", "ci_low", "ci_high",
                 "only_this", "only_best", "p_vs_best", "p_vs_ensemble", "distinguishable_from_best"]
COSTS = {"gflops": ("gflops", "GFLOPs", "GFLOPs per image (log scale)"),
         "time": ("train_time_s", "training time", "training time, s (log scale)")}


# =========================================================================== loading
@dataclass
class Entry:
    """A completed run or an ensemble, as the tables and figures see it."""

    key: str  # "model/seed<seed>" (as bench.ensemble names members) or "ensemble:<name>"
    kind: str  # lb.KIND_MODEL or lb.KIND_ENSEMBLE
    model: str  # model name, or the ensemble's name
    seed: int | None
    label: str  # for tables and figures
    root: Path  # run folder or ensemble folder
    metrics: dict
    rank: int | None = None  # validation rank (runs only)

    @property
    def val_acc(self) -> float:
        return lb._num((self.metrics.get("val") or {}).get("accuracy"))

    @property
    def test_acc(self) -> float:
        return lb._num((self.metrics.get("test") or {}).get("accuracy"))

    def predictions_path(self, split: str) -> Path:
        return self.root / f"predictions_{split}.csv"


@dataclass
class Predictions:
    """Saved per-image predictions of one split, sorted by path."""

    paths: np.ndarray
    labels: np.ndarray  # class indices
    predicted: np.ndarray

    @property
    def correct(self) -> np.ndarray:
        return self.labels == self.predicted

    def same_images(self, other: "Predictions") -> bool:
        return (len(self.paths) == len(other.paths) and bool((self.paths == other.paths).all())
                and bool((self.labels == other.labels).all()))


@dataclass
class ExperimentResults:
    """Everything the report shows about one experiment, read once.

    ``runs``: completed runs in leaderboard (validation) order; ``unfinished``: failed and
    running runs with their error; ``ensembles``: by validation accuracy, then name;
    ``ensemble``: the one compared against (highest validation accuracy, or the one
    named); ``board``: the model rows of the leaderboard (:func:`bench.leaderboard.model_rows_frame`).
    Prediction and history files are read on first use and cached.
    """

    exp_dir: Path
    classes: list[str]
    board: pd.DataFrame
    runs: list[Entry]
    unfinished: pd.DataFrame
    ensembles: list[Entry]
    ensemble: Entry | None
    reference_dir: Path | None
    data_kind: str | None = None
    data_root: str | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.exp_dir.name

    @property
    def best(self) -> Entry | None:
        """The run ranked first by validation accuracy."""
        return self.runs[0] if self.runs else None

    @property
    def entries(self) -> list[Entry]:
        return [*self.runs, *self.ensembles]

    @property
    def several_seeds(self) -> bool:
        models = [e.model for e in self.runs]
        return len(models) != len(set(models))

    def predictions(self, entry: Entry, split: str = "test") -> Predictions | None:
        key = ("pred", entry.key, split)
        if key not in self._cache:
            self._cache[key] = _read_predictions(entry.predictions_path(split), self.classes)
        return self._cache[key]

    def history(self, entry: Entry) -> pd.DataFrame | None:
        key = ("hist", entry.key)
        if key not in self._cache:
            path = entry.root / "history.csv"
            try:
                self._cache[key] = pd.read_csv(path)
            except (OSError, ValueError) as exc:
                log.debug("no history at %s: %s", path, exc)
                self._cache[key] = None
        return self._cache[key]

    def n_test(self) -> int | None:
        """Number of test images (of the best run; all runs of an experiment share the split)."""
        for entry in self.entries:
            n = (entry.metrics.get("test") or {}).get("n")
            if n:
                return int(n)
        return None

    def reference_table(self, filename: str) -> pd.DataFrame | None:
        key = ("ref", filename)
        if key not in self._cache:
            table = None
            if self.reference_dir is not None and (self.reference_dir / filename).is_file():
                try:
                    table = pd.read_csv(self.reference_dir / filename)
                except (OSError, ValueError) as exc:
                    log.warning("could not read reference table %s: %s", self.reference_dir / filename, exc)
            self._cache[key] = table
        return self._cache[key]


def _read_predictions(path: Path, classes: Sequence[str]) -> Predictions | None:
    try:
        frame = pd.read_csv(path, usecols=["path", "label", "predicted"], dtype=str, keep_default_na=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("could not read %s: %s", path, exc)
        return None
    index = {c: i for i, c in enumerate(classes)}
    unknown = (set(frame["label"]) | set(frame["predicted"])) - set(index)
    if unknown:
        log.warning("%s has class names %s outside %s; its statistics are left out", path, sorted(unknown), classes)
        return None
    frame = frame.sort_values("path", kind="mergesort")
    return Predictions(frame["path"].to_numpy(str), frame["label"].map(index).to_numpy(int),
                       frame["predicted"].map(index).to_numpy(int))


def _data_info(run_dir: runs.RunDir, metrics: dict) -> tuple[str | None, str | None]:
    kind = None
    try:
        import yaml  # PyYAML comes with hydra/omegaconf

        with open(run_dir.config, encoding="utf-8") as fh:
            kind = ((yaml.safe_load(fh) or {}).get("data") or {}).get("kind")
    except Exception as exc:  # a missing or odd config only loses the data note
        log.debug("could not read data kind from %s: %s", run_dir.config, exc)
    return kind, metrics.get("data_root")


def _load_ensembles(exp_dir: Path) -> list[Entry]:
    out = []
    folder = exp_dir / ens.ENSEMBLES_DIR
    if not folder.is_dir():
        return out
    for metrics_path in sorted(folder.glob("*/metrics.json")):
        try:
            metrics = runs.read_json(metrics_path)
        except (OSError, ValueError) as exc:
            log.warning("skipping unreadable ensemble %s: %s", metrics_path, exc)
            continue
        if not isinstance(metrics, dict) or "test" not in metrics or "val" not in metrics:
            log.warning("skipping ensemble %s: metrics.json lacks val/test", metrics_path.parent)
            continue
        name = str(metrics.get("name") or metrics_path.parent.name)
        out.append(Entry(f"ensemble:{name}", lb.KIND_ENSEMBLE, name, None, f"ensemble {name}",
                         metrics_path.parent, metrics))
    out.sort(key=lambda e: (-e.val_acc if e.val_acc == e.val_acc else math.inf, e.model))
    return out


def load_results(exp_dir, *, reference_dir: Path | str | None = "default",
                 ensemble: str | None = None) -> ExperimentResults:
    """Read an experiment folder (runs, ensembles, reference tables) for the report.

    ``reference_dir``: folder of the published tables; ``"default"`` is the repository's
    ``results/reference``, None leaves them out. ``ensemble``: the ensemble to compare
    against by name (default: highest validation accuracy).
    """
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise FileNotFoundError(f"{exp_dir} is not a folder; pass an experiment folder written by bench-train "
                                "(results/<experiment>), e.g. after `bench-train -m experiment=quickstart`.")
    if reference_dir == "default":
        reference_dir = lb.reference_dir()
    reference_dir = Path(reference_dir) if reference_dir is not None else None
    pairs = []
    for run_dir in runs.iter_run_dirs(exp_dir):
        record = lb.read_run(run_dir)
        if record is not None:
            pairs.append((run_dir, record))
    reference = lb.load_reference(reference_dir / TABLE2_CSV) if reference_dir is not None else {}
    board = lb.model_rows_frame([r for _, r in pairs], reference=reference)
    by_id = {(r.model, r.seed): (d, r) for d, r in pairs}

    completed = board[board["status"] == runs.STATUS_COMPLETED]
    models = completed["model"].tolist()
    several = len(models) != len(set(models))
    entries, data_kind, data_root = [], None, None
    for row in completed.itertuples(index=False):
        seed = None if pd.isna(row.seed) else int(row.seed)
        run_dir, record = by_id[(row.model, seed)]
        label = f"{row.model} s{seed}" if several else str(row.model)
        entries.append(Entry(ens.member_id(row.model, seed), lb.KIND_MODEL, str(row.model), seed, label,
                             run_dir.root, record.metrics, None if pd.isna(row.rank) else int(row.rank)))
        if data_kind is None:
            data_kind, data_root = _data_info(run_dir, record.metrics)

    unfinished = board.loc[board["status"] != runs.STATUS_COMPLETED, ["model", "seed", "status", "error"]]
    classes = lb._union_classes([r for _, r in pairs if r.completed])
    ensembles = _load_ensembles(exp_dir)
    if not classes and ensembles:
        classes = ens._classes_of(ensembles[0].metrics)
    chosen = None
    if ensemble is not None:
        chosen = next((e for e in ensembles if e.model == ensemble), None)
        if chosen is None:
            raise ValueError(f"no ensemble named {ensemble!r} in {exp_dir / ens.ENSEMBLES_DIR} "
                             f"(found: {', '.join(e.model for e in ensembles) or 'none'})")
    elif ensembles:
        chosen = ensembles[0]
    return ExperimentResults(exp_dir, classes, board, entries, unfinished.reset_index(drop=True), ensembles,
                             chosen, reference_dir, data_kind, data_root)


# =========================================================================== tables
def statistics_table(res: ExperimentResults, *, n_resamples: int = stats.DEFAULT_RESAMPLES,
                     seed: int = stats.DEFAULT_SEED, confidence: float = stats.DEFAULT_CONFIDENCE,
                     alpha: float = stats.DEFAULT_ALPHA) -> pd.DataFrame:
    """One row per completed run (validation rank order), then the ensembles.

    Columns: rank, kind, model, seed, label, val_acc, test_acc, n_test, ci_low, ci_high
    (percentile bootstrap of test accuracy), only_this / only_best (test images only
    this entry, or only the best run, gets right), p_vs_best, p_vs_ensemble (McNemar
    exact, two-sided), distinguishable_from_best (p_vs_best < alpha; None for the best
    itself and where there are no comparable predictions). Cached per parameter set.
    """
    key = ("stats", n_resamples, seed, confidence, alpha)
    if key in res._cache:
        return res._cache[key]
    entries = res.entries
    preds = [res.predictions(e) for e in entries]
    rows = []
    for e, p in zip(entries, preds):
        rows.append({"rank": e.rank, "kind": e.kind, "model": e.model, "seed": e.seed, "label": e.label,
                     "val_acc": e.val_acc, "test_acc": e.test_acc,
                     "n_test": len(p.paths) if p is not None else (e.metrics.get("test") or {}).get("n"),
                     "ci_low": math.nan, "ci_high": math.nan, "only_this": None, "only_best": None,
                     "p_vs_best": math.nan, "p_vs_ensemble": math.nan, "distinguishable_from_best": None})
    # Bootstrap: entries on the same images share resamples (one matrix product per group).
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(preds):
        if p is not None and len(p.paths):
            groups.setdefault((len(p.paths), hash(tuple(p.paths))), []).append(i)
    for members in groups.values():
        ci = stats.bootstrap_accuracy_ci(np.stack([preds[i].correct for i in members]),
                                         n_resamples=n_resamples, confidence=confidence, seed=seed)
        for i, (low, high) in zip(members, ci):
            rows[i]["ci_low"], rows[i]["ci_high"] = float(low), float(high)
    # McNemar against the best run and against the ensemble.
    best_i = 0 if res.best is not None else None
    ens_i = entries.index(res.ensemble) if res.ensemble is not None else None
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
                rows[i]["distinguishable_from_best"] = bool(result.significant(alpha))
    frame = pd.DataFrame(rows, columns=STATS_COLUMNS)
    for col in ("rank", "seed", "n_test", "only_this", "only_best"):
        frame[col] = pd.array(frame[col].tolist(), dtype="Int64")
    res._cache[key] = frame
    return frame


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
    return means.sort_values(["val_acc", "model"], ascending=[False, True], kind="mergesort").reset_index(drop=True)


def class_accuracy_table(res: ExperimentResults) -> pd.DataFrame:
    """Class-wise test accuracy (recall), models x classes plus overall, as fractions;
    one row per model (mean over seeds), then the ensembles. Index: the row label."""
    class_cols = [lb.class_column(c) for c in res.classes]
    means = _per_model_means(res, [*class_cols, "test_acc"])
    table = means.set_index("model")[[*class_cols, "test_acc"]]
    table.columns = [*res.classes, "overall"]
    rows = [table]
    for e in res.ensembles:
        per_class = (e.metrics.get("test") or {}).get("per_class") or {}
        values = [lb._num((per_class.get(c) or {}).get("accuracy")) for c in res.classes] + [e.test_acc]
        rows.append(pd.DataFrame([values], index=[e.label], columns=table.columns))
    out = pd.concat([r for r in rows if len(r)]) if any(len(r) for r in rows) else table
    out.index.name = "model"
    return out.astype(float)


def _reference_key(model: str, names: Sequence[str]) -> str | None:
    """The published row for a model: the same rule as :func:`bench.leaderboard.paper_accuracy`
    (exact torchvision name, optionally written ``torchvision/<name>``)."""
    if model in names:
        return model
    prefix, _, name = model.rpartition("/")
    return name if prefix == "torchvision" and name in names else None


def published_class_accuracy(res: ExperimentResults) -> pd.DataFrame | None:
    """The paper's Table 2 rows for the models of this experiment (fractions), with
    ``ours_minus_paper`` (overall); None without the reference file or a matching model."""
    table = res.reference_table(TABLE2_CSV)
    if table is None or "model" not in table.columns or "overall" not in table.columns:
        return None
    names = table["model"].astype(str).tolist()
    ours = class_accuracy_table(res)
    rows = []
    for model in ours.index:
        ref = _reference_key(str(model), names)
        if ref is None:
            continue
        paper = table[table["model"].astype(str) == ref].iloc[0]
        row = {c: lb._num(paper.get(c)) for c in [*res.classes, "overall"]}
        row["ours_minus_paper"] = ours.loc[model, "overall"] - row["overall"]
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
                     **{k: 100 * lb._num(macro.get(k)) for k in MACRO_TABLE3}})
    table3 = res.reference_table(TABLE3_CSV)
    if table3 is not None and {"method", *cols} <= set(table3.columns) and _any_published_model(res):
        for r in table3.to_dict("records"):
            rows.append({"source": f"published ({PAPER}, Table 3)", "model": str(r["method"]),
                         **{k: lb._num(r[k]) for k in cols}})
    return pd.DataFrame(rows, columns=["source", "model", *cols])


def _any_published_model(res: ExperimentResults) -> bool:
    names: list[str] = []
    for filename, column in ((TABLE2_CSV, "model"), (TABLE3_CSV, "method")):
        table = res.reference_table(filename)
        if table is not None and column in table.columns:
            names += table[column].astype(str).tolist()
    return any(_reference_key(e.model, names) for e in res.runs)


def unfinished_table(res: ExperimentResults) -> pd.DataFrame:
    """Failed and running runs with their error (never dropped from the report)."""
    return res.unfinished.copy()


# =========================================================================== figures
def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # headless: draws with Agg, no pyplot, no display
    return fig


def figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def plot_test_accuracy_ci(res: ExperimentResults, stats_frame: pd.DataFrame | None = None):
    """Test accuracy (%) with its bootstrap interval for every run and ensemble, top = best
    by validation; grey where McNemar cannot tell the entry from the best at 5%."""
    st = statistics_table(res) if stats_frame is None else stats_frame
    n = len(st)
    fig = _figure(7.5, 1.8 + 0.28 * max(n, 1))
    ax = fig.add_subplot()
    if not n:
        ax.text(0.5, 0.5, "no completed runs", ha="center", va="center", transform=ax.transAxes)
        return fig
    y = np.arange(n)[::-1]
    acc, low, high = (100 * st[c].to_numpy(float) for c in ("test_acc", "ci_low", "ci_high"))
    err = np.nan_to_num(np.vstack([(acc - low).clip(min=0), (high - acc).clip(min=0)]))
    dist = st["distinguishable_from_best"]
    color = np.where(dist.eq(True).to_numpy(), "C0", "0.55").astype(object)
    if res.best is not None:
        color[0] = "C3"
    is_ens = (st["kind"] == lb.KIND_ENSEMBLE).to_numpy()
    for c in dict.fromkeys(color):  # one errorbar call per colour and marker: fast for many rows
        for ens_rows, marker, ms in ((False, "o", 5), (True, "*", 9)):
            sel = (color == c) & (is_ens == ens_rows)
            if sel.any():
                ax.errorbar(acc[sel], y[sel], xerr=err[:, sel], fmt=marker, color=c, ms=ms, capsize=2, lw=1.2)
    if res.best is not None:
        ax.axvline(acc[0], color="C3", lw=0.8, ls=":")
    ax.set_yticks(y, st["label"].tolist(), fontsize=8)
    ax.set_xlabel("test accuracy, % (95% bootstrap interval)")
    ax.set_title(f"{res.name}: test accuracy, rows in validation order\n"
                 "red: best by validation; blue: differs from it (McNemar p < 0.05)\n"
                 "grey: not distinguishable from it; star: ensemble", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_class_accuracy(res: ExperimentResults):
    """Heatmap of class-wise test accuracy (%), models (validation order) x classes + overall."""
    table = class_accuracy_table(res)
    rows, cols = table.shape
    fig = _figure(1.4 + 0.75 * max(cols, 1) + 1.6, 1.2 + 0.3 * max(rows, 1))
    ax = fig.add_subplot()
    if not rows:
        ax.text(0.5, 0.5, "no completed runs", ha="center", va="center", transform=ax.transAxes)
        return fig
    values = 100 * table.to_numpy(float)
    finite = values[np.isfinite(values)]
    vmin = float(finite.min()) if len(finite) else 0.0
    im = ax.imshow(values, cmap="viridis", vmin=vmin, vmax=100, aspect="auto")
    ax.set_xticks(range(cols), table.columns, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(rows), table.index, fontsize=8)
    mid = (vmin + 100) / 2
    for i in range(rows):
        for j in range(cols):
            v = values[i, j]
            if np.isfinite(v):
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7, color="black" if v > mid else "white")
    ax.set_title("class-wise test accuracy, % (rows in order of validation accuracy)", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def _cost_points(res: ExperimentResults, cost_key: str) -> pd.DataFrame:
    """label, kind, cost, val_acc, test_acc for every run and ensemble; an ensemble's
    training time is its distinct members' total, its GFLOPs the members' sum."""
    by_key = {e.key: e for e in res.runs}
    rows = []
    for e in res.entries:
        cost = lb._num(e.metrics.get(cost_key))
        if e.kind == lb.KIND_ENSEMBLE and cost_key == "train_time_s":
            members = {m.get("member") for m in e.metrics.get("members") or []}
            times = [lb._num(by_key[m].metrics.get("train_time_s")) if m in by_key else math.nan for m in members]
            cost = float(sum(times)) if times else math.nan
        rows.append({"label": e.label, "kind": e.kind, "cost": cost, "val_acc": e.val_acc, "test_acc": e.test_acc})
    return pd.DataFrame(rows, columns=["label", "kind", "cost", "val_acc", "test_acc"])


def plot_accuracy_vs_cost(res: ExperimentResults, cost: str = "gflops", stats_frame: pd.DataFrame | None = None):
    """Test accuracy (with bootstrap interval) against ``cost`` ("gflops" or "time").

    The Pareto front (red rings, dashed) is computed on *validation* accuracy: the
    runs and ensembles that no other is both cheaper and better than on validation.
    """
    cost_key, cost_name, xlabel = COSTS[cost]
    pts = _cost_points(res, cost_key)
    st = statistics_table(res) if stats_frame is None else stats_frame
    fig = _figure(7.5, 5.0)
    ax = fig.add_subplot()
    ok = pts["cost"].notna() & (pts["cost"] > 0) & pts["test_acc"].notna()
    if not ok.any():
        ax.text(0.5, 0.5, f"no {cost_key} recorded", ha="center", va="center", transform=ax.transAxes)
        return fig
    front = stats.pareto_front(pts["cost"].where(ok), pts["val_acc"].where(ok))
    acc = 100 * pts["test_acc"]
    low = 100 * st["ci_low"].reindex(pts.index)
    high = 100 * st["ci_high"].reindex(pts.index)
    for i in np.flatnonzero(ok.to_numpy()):
        is_ens = pts.at[i, "kind"] == lb.KIND_ENSEMBLE
        yerr = None
        if np.isfinite(low.iloc[i]) and np.isfinite(high.iloc[i]):
            yerr = [[max(acc.iloc[i] - low.iloc[i], 0)], [max(high.iloc[i] - acc.iloc[i], 0)]]
        ax.errorbar(pts.at[i, "cost"], acc.iloc[i], yerr=yerr, fmt="*" if is_ens else "o",
                    color="C1" if is_ens else "C0", ms=10 if is_ens else 5, capsize=2, lw=0.8, alpha=0.9)
    if front.any():
        f = pts[front].sort_values("cost")
        ax.plot(f["cost"], 100 * f["test_acc"], ls="--", color="C3", lw=1, zorder=1)
        ax.scatter(f["cost"], 100 * f["test_acc"], s=130, facecolors="none", edgecolors="C3", lw=1.5,
                   zorder=3, label="Pareto front (on validation accuracy)")
        ax.legend(loc="lower right", fontsize=8)
    label_all = ok.sum() <= 40
    for i in np.flatnonzero(ok.to_numpy()):
        if label_all or front[i]:
            ax.annotate(pts.at[i, "label"], (pts.at[i, "cost"], acc.iloc[i]), xytext=(4, 3),
                        textcoords="offset points", fontsize=7)
    costs = pts.loc[ok, "cost"]
    if costs.max() / costs.min() > 5:
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        xlabel = xlabel.replace(" (log scale)", "")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy, % (95% bootstrap interval)")
    ax.set_title(f"{res.name}: test accuracy vs {cost_name}; star = ensemble", fontsize=9)
    ax.grid(alpha=0.3)
    return fig


def plot_confusion(res: ExperimentResults, entry: Entry, split: str = "test"):
    """Confusion matrix of ``entry`` on ``split``: counts and row percentages side by side."""
    cm = np.asarray((entry.metrics.get(split) or {}).get("confusion_matrix") or [], dtype=float)
    classes = ens._classes_of(entry.metrics) or res.classes
    fig = _figure(12.5, 5.4)
    if cm.ndim != 2 or not cm.size:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no confusion matrix", ha="center", va="center", transform=ax.transAxes)
        return fig
    row_sums = cm.sum(axis=1, keepdims=True)
    pct = np.divide(100 * cm, row_sums, out=np.zeros_like(cm), where=row_sums > 0)
    for k, (values, title, fmt, vmax) in enumerate((
            (cm, "counts", "{:.0f}", max(cm.max(), 1)),
            (pct, "row %  (each true class sums to 100)", "{:.1f}", 100.0))):
        ax = fig.add_subplot(1, 2, k + 1)
        im = ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax)
        ax.set_xticks(range(len(classes)), classes, rotation=40, ha="right", fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title, fontsize=9)
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                if values[i, j] or i == j:
                    ax.text(j, i, fmt.format(values[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if values[i, j] > vmax / 2 else "black")
        fig.colorbar(im, ax=ax, shrink=0.75)
    acc = lb._num((entry.metrics.get(split) or {}).get("accuracy"))
    fig.suptitle(f"{entry.label}: {split} confusion matrix (accuracy {100 * acc:.2f}%, n = {int(cm.sum())})",
                 fontsize=10)
    return fig


def plot_training_curves(res: ExperimentResults, top: int = DEFAULT_TOP):
    """Loss and accuracy per epoch (train solid, validation dashed) of the top runs by validation."""
    fig = _figure(12.5, 4.8)
    ax_loss, ax_acc = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    shown = 0
    for i, entry in enumerate(res.runs[:top]):
        hist = res.history(entry)
        if hist is None or hist.empty or "epoch" not in hist:
            continue
        shown += 1
        color = f"C{i % 10}"
        marker = "o" if len(hist) < 15 else None
        for ax, metric in ((ax_loss, "loss"), (ax_acc, "acc")):
            scale = 100 if metric == "acc" else 1
            if f"train_{metric}" in hist:
                ax.plot(hist["epoch"], scale * hist[f"train_{metric}"], color=color, marker=marker, ms=3,
                        label=f"{entry.label} train")
            if f"val_{metric}" in hist:
                ax.plot(hist["epoch"], scale * hist[f"val_{metric}"], color=color, ls="--", marker=marker, ms=3,
                        label=f"{entry.label} val")
    for ax, ylabel in ((ax_loss, "loss"), (ax_acc, "accuracy, %")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if shown:
            ax.xaxis.get_major_locator().set_params(integer=True)
    if shown:
        ax_acc.legend(fontsize=7, loc="lower right")
    else:
        ax_loss.text(0.5, 0.5, "no training history", ha="center", va="center", transform=ax_loss.transAxes)
    fig.suptitle(f"{res.name}: training curves of the top {shown} run(s) by validation accuracy "
                 "(solid: train, dashed: validation)", fontsize=10)
    return fig


# =========================================================================== Markdown
def _esc(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(frame: pd.DataFrame, bold: Sequence[str] = (), index: bool = False) -> str:
    """A Markdown pipe table of already formatted cells; ``bold`` columns have their best
    (largest numeric value; ties all) in bold. Cells are ``str``; numbers are parsed back."""
    if index:
        frame = frame.reset_index()
    cols = list(frame.columns)
    body = frame.astype(object).where(frame.notna(), "-").astype(str)
    numeric = {c: bool(len(body)) and bool((pd.to_numeric(_numeric_text(body[c]), errors="coerce").notna()
                                             | (body[c] == "-")).all()) for c in cols}
    for col in bold:
        if col not in body:
            continue
        values = pd.to_numeric(_numeric_text(body[col]), errors="coerce")
        if values.notna().any():
            best = values == values.max()
            body.loc[best, col] = "**" + body.loc[best, col] + "**"
    lines = ["| " + " | ".join(_esc(c) for c in cols) + " |",
             "|" + "|".join("---:" if numeric[c] else "---" for c in cols) + "|"]
    lines += ["| " + " | ".join(_esc(v) for v in row) + " |" for row in body.itertuples(index=False)]
    return "\n".join(lines)


def _numeric_text(col: pd.Series) -> pd.Series:
    return col.str.replace("**", "", regex=False).str.rstrip("%").str.replace("−", "-", regex=False)


def _pct(x: Any, digits: int = 2) -> str:
    x = lb._num(x)
    return "-" if not math.isfinite(x) else f"{100 * x:.{digits}f}"


def _p(x: Any) -> str:
    x = lb._num(x)
    if not math.isfinite(x):
        return "-"
    return f"{x:.3f}" if x >= 0.001 else f"{x:.1e}"


def _link(key: str, alt: str) -> str:
    return f"![{alt}]({FIGURES[key]})"


def _statistics_md(res: ExperimentResults, st: pd.DataFrame, alpha: float, confidence: float,
                   n_resamples: int, seed: int) -> list[str]:
    out = []
    cells = []
    for r in st.to_dict("records"):
        dist = r["distinguishable_from_best"]
        cells.append({
            "rank": "-" if pd.isna(r["rank"]) else str(r["rank"]),
            "model": r["label"],
            "val acc %": _pct(r["val_acc"]),
            "test acc %": _pct(r["test_acc"]),
            f"{round(100 * confidence)}% CI": "-" if not math.isfinite(r["ci_low"])
            else f"{100 * r['ci_low']:.2f} – {100 * r['ci_high']:.2f}",
            "vs best +/−": "-" if pd.isna(r["only_this"]) else f"+{r['only_this']} / −{r['only_best']}",
            "p vs best": _p(r["p_vs_best"]),
            "p vs ensemble": _p(r["p_vs_ensemble"]) if res.ensemble is not None else "-",
            f"differs from best (α={alpha:g})": "-" if dist is None or pd.isna(dist) else ("yes" if dist else "no"),
        })
    frame = pd.DataFrame(cells)
    if res.best is not None:
        frame.iloc[0, -1] = "(best)"
    out.append(md_table(frame, bold=["val acc %"]))
    n = res.n_test()
    one = f"one image is {100 / n:.3g} percentage points" if n else "the number of test images is unknown"
    ens_name = f"the ensemble ({res.ensemble.model})" if res.ensemble is not None else "the ensemble (none here)"
    out.append("")
    out.append(
        f"*How to read this:* rows are ranked by validation accuracy (test never selects). "
        f"CI: {round(100 * confidence)}% percentile bootstrap of test accuracy ({n_resamples:,} resamples of the "
        f"test images, seed {seed}). +/−: test images only this model / only the best model gets right. "
        f"p: McNemar's exact test (two-sided binomial test on those discordant images) against the best run "
        f"({res.best.label if res.best else '-'}) and against {ens_name}; \"differs\" means p < {alpha:g}, "
        f"uncorrected for the number of comparisons. Test set: {n if n else '?'} images; {one}.")
    return out


def _fmt_frac_table(table: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    return table.apply(lambda col: col.map(lambda v: _pct(v, digits)))


def _data_note(res: ExperimentResults) -> str:
    kind = (res.data_kind or "").lower()
    root = res.data_root or ""
    if kind == "synthetic":
        return (f"Data: the embedded synthetic stand-in (procedurally drawn cells with the PBC class names), "
                f"not real images; its accuracies are not comparable with published numbers. The class scheme "
                f"follows the PBC dataset ({PBC_CITATION}).")
    looks_pbc = (kind == "bloodmnist" or "pbc" in root.lower()
                 or (len(res.classes) == len(PBC_CLASSES) and set(res.classes) == PBC_CLASSES))
    if looks_pbc:
        what = "BloodMNIST, derived from the PBC dataset" if kind == "bloodmnist" else "the PBC dataset"
        return f"Data: {what} ({PBC_CITATION})."
    return f"Data: `{root or 'unknown'}`. Published reference numbers are for the PBC dataset ({PBC_CITATION})."


def report_markdown(res: ExperimentResults, figures: dict[str, str], *, top: int = DEFAULT_TOP,
                    n_resamples: int = stats.DEFAULT_RESAMPLES, seed: int = stats.DEFAULT_SEED,
                    confidence: float = stats.DEFAULT_CONFIDENCE, alpha: float = stats.DEFAULT_ALPHA) -> str:
    """The Markdown text of the report; ``figures`` maps figure keys (:data:`FIGURES`) that were written."""
    st = statistics_table(res, n_resamples=n_resamples, seed=seed, confidence=confidence, alpha=alpha)
    models = sorted({e.model for e in res.runs})
    n_unfinished = len(res.unfinished)
    failed = int((res.unfinished["status"] == runs.STATUS_FAILED).sum()) if n_unfinished else 0
    lines = [
        f"# Report: {res.name}",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M')} by `bench-report` from `{res.exp_dir}`. "
        f"{len(res.runs)} completed run(s) of {len(models)} model(s), {failed} failed, "
        f"{n_unfinished - failed} not finished; {len(res.ensembles)} ensemble(s). "
        f"Test images: {res.n_test() or '-'}. "
        "\"Best\" always means best by **validation** accuracy; test numbers are reported, never used to choose.",
        "",
        "## Ranking with uncertainty",
        "",
    ]
    if res.runs or res.ensembles:
        lines += _statistics_md(res, st, alpha, confidence, n_resamples, seed)
        if "ci" in figures:
            lines += ["", _link("ci", "test accuracy with 95% bootstrap intervals")]
    else:
        lines.append("No completed runs yet.")

    if res.several_seeds:
        seeds = seed_table(res)
        cells = pd.DataFrame({
            "model": seeds["model"], "seeds": seeds["n_seeds"].astype(str),
            **{f"{split} acc % (mean ± sd)": [f"{_pct(m)} ± {_pct(s)}" for m, s in
                                             zip(seeds[f"{split}_acc_mean"], seeds[f"{split}_acc_std"])]
               for split in ("val", "test")},
        })
        lines += ["", "## Across seeds", "",
                  "Mean and sample standard deviation over the completed seeds of each model "
                  "(sd `-` for a single seed).", "", md_table(cells)]

    lines += ["", "## Class-wise test accuracy (as the paper's Table 2)", ""]
    classes = class_accuracy_table(res)
    if len(classes):
        mean_note = " Models with several seeds: mean over seeds." if res.several_seeds else ""
        lines += [f"Accuracy per class (= recall), %; best per column in bold; rows by validation accuracy.{mean_note}",
                  "", md_table(_fmt_frac_table(classes), bold=list(classes.columns), index=True)]
        published = published_class_accuracy(res)
        if published is not None:
            shown = _fmt_frac_table(published.drop(columns="ours_minus_paper"))
            shown["ours − paper (overall)"] = [f"{100 * d:+.2f}" if math.isfinite(d) else "-"
                                              for d in published["ours_minus_paper"]]
            lines += ["", f"Published class-wise accuracy for the same models ({PAPER}, Table 2), %. "
                      "Their split is not ours: differences of a few tenths are within split-to-split noise.",
                      "", md_table(shown, bold=list(published.columns.drop("ours_minus_paper")), index=True)]
        if "classes" in figures:
            lines += ["", _link("classes", "class-wise test accuracy heatmap")]
    else:
        lines.append("No completed runs yet.")

    lines += ["", "## Comparison with published results (as the paper's Table 3)", ""]
    comp = comparison_table(res, top=top)
    if len(comp):
        ours = comp["source"] == "this experiment"
        cells = comp.copy()
        for col in ("accuracy", *MACRO_TABLE3):
            cells[col] = [f"{v:.2f}" if math.isfinite(v) else "-" for v in comp[col]]
        table = md_table(cells[ours], bold=["accuracy", *MACRO_TABLE3])
        if (~ours).any():
            table += "\n" + "\n".join(md_table(cells[~ours]).splitlines()[2:])
        lines += [f"Test accuracy and macro (one-vs-rest) precision, sensitivity, specificity, %, for the top {top} "
                  "models by validation accuracy and the ensembles"
                  + (f", then the published numbers ({PAPER}, Table 3)" if (~ours).any() else "")
                  + ". Bold: best of this experiment.", "", table]
    else:
        lines.append("No completed runs yet.")

    if "gflops" in figures or "time" in figures:
        lines += ["", "## Accuracy vs cost", "",
                  "Test accuracy with its 95% bootstrap interval against compute (GFLOPs per image) and training "
                  "time; stars are ensembles (sum over members). Red rings: the Pareto front on **validation** "
                  "accuracy (no other entry is both cheaper and better on validation), so on test the line need "
                  "not rise monotonically.", ""]
        lines += [_link(k, alt) for k, alt in (("gflops", "accuracy vs GFLOPs"), ("time", "accuracy vs training time"))
                  if k in figures]

    if "cm_best" in figures or "cm_ensemble" in figures:
        lines += ["", "## Confusion matrices (test)", ""]
        if "cm_best" in figures:
            lines += [f"Best single model by validation accuracy: **{res.best.label}**.", "",
                      _link("cm_best", f"confusion matrix of {res.best.label}"), ""]
        if "cm_ensemble" in figures:
            lines += [f"Ensemble: **{res.ensemble.model}**.", "",
                      _link("cm_ensemble", f"confusion matrix of ensemble {res.ensemble.model}")]

    if "curves" in figures:
        lines += ["", "## Training curves", "",
                  f"Loss and accuracy per epoch of the top {min(top, len(res.runs))} run(s) by validation accuracy.",
                  "", _link("curves", "training curves")]

    lines += ["", "## Failed and unfinished runs", ""]
    if n_unfinished:
        cells = res.unfinished.copy()
        cells["seed"] = cells["seed"].astype(object).where(cells["seed"].notna(), "-").astype(str)
        cells["error"] = cells["error"].astype(object).where(cells["error"].notna(), "")
        lines.append(md_table(cells))
    else:
        lines.append("None.")

    lines += ["", "---", "", _data_note(res) + f" Published numbers: {PAPER}, arXiv:2110.09508.", ""]
    return "\n".join(lines)


# =========================================================================== writing
def build_report(exp_dir, out_dir=None, *, top: int = DEFAULT_TOP, n_resamples: int = stats.DEFAULT_RESAMPLES,
                 seed: int = stats.DEFAULT_SEED, confidence: float = stats.DEFAULT_CONFIDENCE,
                 alpha: float = stats.DEFAULT_ALPHA, reference_dir: Path | str | None = "default",
                 ensemble: str | None = None, results: ExperimentResults | None = None) -> Path:
    """Write ``report.md`` and its figures into ``out_dir`` (default ``<exp_dir>/report``);
    return the path of ``report.md``. Every file is written atomically."""
    res = results if results is not None else load_results(exp_dir, reference_dir=reference_dir, ensemble=ensemble)
    out_dir = Path(out_dir) if out_dir is not None else res.exp_dir / REPORT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    st = statistics_table(res, n_resamples=n_resamples, seed=seed, confidence=confidence, alpha=alpha)
    figures: dict[str, Any] = {}
    if len(st):
        figures["ci"] = plot_test_accuracy_ci(res, st)
        figures["gflops"] = plot_accuracy_vs_cost(res, "gflops", st)
        figures["time"] = plot_accuracy_vs_cost(res, "time", st)
    if res.runs:
        figures["classes"] = plot_class_accuracy(res)
        figures["cm_best"] = plot_confusion(res, res.best)
        figures["curves"] = plot_training_curves(res, top)
    if res.ensemble is not None:
        figures["cm_ensemble"] = plot_confusion(res, res.ensemble)
    for key, fig in figures.items():
        runs.write_bytes_atomic(out_dir / FIGURES[key], figure_png(fig))
    text = report_markdown(res, {k: FIGURES[k] for k in figures}, top=top, n_resamples=n_resamples, seed=seed,
                           confidence=confidence, alpha=alpha)
    runs.write_text_atomic(out_dir / REPORT_MD, text)
    return out_dir / REPORT_MD


# =========================================================================== CLI
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench-report",
        description="Write <experiment>/report/report.md with figures: ranking with bootstrap intervals and "
                    "McNemar tests, class-wise and published-comparison tables, accuracy vs cost with the "
                    "Pareto front, confusion matrices and training curves. Reads saved results only.",
    )
    parser.add_argument("exp_dir", type=Path, help="experiment folder, e.g. results/<experiment>")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default <exp_dir>/report)")
    parser.add_argument("--top", type=int, default=DEFAULT_TOP, help="models in the comparison table and "
                        f"training curves (default {DEFAULT_TOP})")
    parser.add_argument("--resamples", type=int, default=stats.DEFAULT_RESAMPLES,
                        help=f"bootstrap resamples (default {stats.DEFAULT_RESAMPLES})")
    parser.add_argument("--seed", type=int, default=stats.DEFAULT_SEED, help="bootstrap seed (default 0)")
    parser.add_argument("--confidence", type=float, default=stats.DEFAULT_CONFIDENCE,
                        help="confidence level of the intervals (default 0.95)")
    parser.add_argument("--alpha", type=float, default=stats.DEFAULT_ALPHA,
                        help="significance level of the McNemar column (default 0.05)")
    parser.add_argument("--ensemble", default=None, help="ensemble to compare against, by name "
                        "(default: the one with the highest validation accuracy)")
    parser.add_argument("--reference", type=Path, default=None,
                        help="folder with the published tables (default results/reference of the repository)")
    parser.add_argument("--no-reference", action="store_true", help="leave the published numbers out")
    args = parser.parse_args(argv)

    if not (args.exp_dir / "runs").is_dir():
        print(f"bench-report: {args.exp_dir} has no runs/ folder. Pass an experiment folder written by "
              "bench-train (results/<experiment>, containing runs/<model>/seed<seed>/).", file=sys.stderr)
        return 2
    if args.resamples < 1 or not 0 < args.confidence < 1 or not 0 < args.alpha < 1 or args.top < 1:
        print("bench-report: --resamples and --top must be at least 1; --confidence and --alpha in (0, 1).",
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    reference = None if args.no_reference else (args.reference or "default")
    try:
        path = build_report(args.exp_dir, args.out, top=args.top, n_resamples=args.resamples, seed=args.seed,
                            confidence=args.confidence, alpha=args.alpha, reference_dir=reference,
                            ensemble=args.ensemble)
    except ValueError as exc:
        print(f"bench-report: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} and its figures ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
