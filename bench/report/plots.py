"""The report's figures as matplotlib Figures, drawn headless on the Agg canvas (no pyplot)."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd

from bench.results import rows as leaderboard_rows
from bench.results import records as result_records
from bench.metrics import statistics as stats
from bench.ensemble.candidates import classes_of
from bench.report.loading import Entry, ExperimentResults
from bench.report.tables import DEFAULT_TOP, class_accuracy_table, statistics_table

DPI = 110
COSTS = {"gflops": ("gflops", "GFLOPs", "GFLOPs per image (log scale)"),
         "time": ("train_time_s", "training time", "training time, s (log scale)")}


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
    is_ens = (st["kind"] == result_records.KIND_ENSEMBLE).to_numpy()
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
    support = res.class_support()
    ticks = [f"{c}\nn={support[c]}" if c in support else c for c in table.columns]
    ax.set_xticks(range(cols), ticks, rotation=40, ha="right", fontsize=8)
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
        cost = leaderboard_rows._num(e.metrics.get(cost_key))
        if e.kind == result_records.KIND_ENSEMBLE and cost_key == "train_time_s":
            members = {m.get("member") for m in e.metrics.get("members") or []}
            times = [leaderboard_rows._num(by_key[m].metrics.get("train_time_s")) if m in by_key else math.nan for m in members]
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
        is_ens = pts.at[i, "kind"] == result_records.KIND_ENSEMBLE
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
    classes = classes_of(entry.metrics) or res.classes
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
    acc = leaderboard_rows._num((entry.metrics.get(split) or {}).get("accuracy"))
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
