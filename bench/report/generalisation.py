"""How the models travel: the report's generalisation section, from what ``bench-evaluate`` wrote.

Per run and ensemble: balanced accuracy on its own test set and on each external set evaluated
(``<run>/external/<name>/``), the drop with a 95 % percentile-bootstrap interval (the two sets
resampled independently), ECE before and after the temperature fitted on validation, and the share
of cells the referral threshold (chosen on validation) sends to a person; per external set, Kendall's
tau between the in-domain and the external ranking with a one-line verdict; a reliability diagram and
a risk-coverage curve of the top models on test. Nothing is re-run: saved predictions only.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench.metrics import statistics as stats
from bench.metrics.calibration import N_BINS, split_confidence
from bench.results.confidence import validation_choices
from bench.report.loading import Entry, ExperimentResults
from bench.results.records import EXTERNAL_DIR
from bench.runs import files as run_files

ALPHA = 0.05


def external_sets(res: ExperimentResults) -> list[str]:
    """The external sets evaluated for any run or ensemble of the experiment, by name."""
    return sorted({p.parent.name for e in res.entries for p in Path(e.root).glob(f"{EXTERNAL_DIR}/*/metrics.json")})


def _classes(entry: Entry) -> list[str]:
    return list(entry.metrics.get("classes") or (entry.metrics.get("test") or {}).get("per_class", {}))


def _split(entry: Entry, path: Path):
    """(labels, predicted, probs) of a predictions CSV of this entry, or None when it is not there. A
    hard vote's prediction is its vote, not the argmax of the mean probabilities: read as written."""
    if not path.is_file():
        return None
    classes = _classes(entry)
    try:
        _, labels, predicted, probs = run_files.read_predictions(path, classes)
    except run_files.PredictionsError:
        frame = pd.read_csv(path, dtype={"label": str, "predicted": str}, keep_default_na=False)
        index = {c: i for i, c in enumerate(classes)}
        labels, predicted = frame["label"].map(index).to_numpy(int), frame["predicted"].map(index).to_numpy(int)
        probs = frame[[f"prob_{c}" for c in classes]].to_numpy(float)
    return labels, predicted, probs


def travel_row(entry: Entry, sets: list[str], n_resamples: int, seed: int, confidence: float) -> dict:
    """One run's or ensemble's row of the generalisation table."""
    row = {"label": entry.label, "kind": entry.kind}
    test = _split(entry, entry.predictions_path("test"))
    chosen = validation_choices(Path(entry.root)) if entry.metrics.get("voting", "soft") != "hard" else None
    if test is None:
        return row
    row["test_bal_acc"] = _balanced(test)
    if chosen is not None:
        conf = split_confidence(test[2], test[0], chosen[0], chosen[1])
        row.update(test_ece=conf["ece"], test_ece_ts=conf["calibrated"]["ece"],
                   test_referred=conf["referral"]["referred_share"])
    for name in sets:
        away = _split(entry, Path(entry.root) / EXTERNAL_DIR / name / "predictions.csv")
        if away is None:
            continue
        row[f"{name}_bal_acc"] = _balanced(away)
        row[f"{name}_drop"] = row["test_bal_acc"] - row[f"{name}_bal_acc"]
        row[f"{name}_drop_low"], row[f"{name}_drop_high"] = stats.drop_interval(
            test[:2], away[:2], n_resamples, seed, confidence)
        if chosen is not None:
            conf = split_confidence(away[2], away[0], chosen[0], chosen[1])
            row.update({f"{name}_ece": conf["ece"], f"{name}_ece_ts": conf["calibrated"]["ece"],
                        f"{name}_referred": conf["referral"]["referred_share"]})
    return row


def _balanced(split) -> float:
    from bench.metrics import balanced_accuracy

    return balanced_accuracy(split[0], split[1])


def generalisation_table(res: ExperimentResults, *, n_resamples: int = stats.DEFAULT_RESAMPLES,
                         seed: int = stats.DEFAULT_SEED, confidence: float = stats.DEFAULT_CONFIDENCE) -> pd.DataFrame:
    """One row per run and ensemble (validation order) with its in-domain and external numbers."""
    sets = external_sets(res)
    return pd.DataFrame([travel_row(e, sets, n_resamples, seed, confidence) for e in res.entries])


def rank_agreement(table: pd.DataFrame, name: str) -> dict:
    """Kendall's tau between the in-domain (test) and the external ranking by balanced accuracy, and a
    verdict in one line."""
    from scipy.stats import kendalltau

    both = table[["test_bal_acc", f"{name}_bal_acc"]].dropna() if f"{name}_bal_acc" in table else pd.DataFrame()
    if len(both) < 3:
        return {"tau": math.nan, "p": math.nan, "n": len(both),
                "verdict": f"too few models evaluated on {name} ({len(both)}) to compare rankings"}
    tau, p = kendalltau(both["test_bal_acc"], both[f"{name}_bal_acc"])
    carries = tau > 0 and p < ALPHA
    return {"tau": float(tau), "p": float(p), "n": len(both),
            "verdict": f"the in-domain ranking {'does' if carries else 'does not'} carry over to {name} "
                       f"(Kendall's tau {tau:.2f}, p = {p:.3f}, {len(both)} models and ensembles)"}


# --------------------------------------------------------------------------- figures
def plot_reliability(res: ExperimentResults, entries: list[Entry]):
    """Accuracy against confidence in 15 equal-width bins on test, for the top models (a calibrated
    model lies on the diagonal)."""
    from bench.report.plots import _figure

    fig = _figure(5.5, 4.5)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="calibrated")
    edges = np.linspace(0, 1, N_BINS + 1)
    for entry in entries:
        test = _split(entry, entry.predictions_path("test"))
        if test is None:
            continue
        conf, right = test[2].max(1), test[2].argmax(1) == test[0]
        which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, N_BINS - 1)
        xs = [conf[which == b].mean() for b in range(N_BINS) if (which == b).any()]
        ys = [right[which == b].mean() for b in range(N_BINS) if (which == b).any()]
        ax.plot(xs, ys, marker="o", ms=4, label=entry.label)
    ax.set(xlabel="confidence (top probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
           title="Reliability on test (15 bins)")
    ax.legend(fontsize=8)
    return fig


def plot_risk_coverage(res: ExperimentResults, entries: list[Entry]):
    """Error rate of the most confident images against the share kept, on test (lower is better;
    the area under it is AURC)."""
    from bench.report.plots import _figure

    fig = _figure(5.5, 4.5)
    ax = fig.add_subplot()
    for entry in entries:
        test = _split(entry, entry.predictions_path("test"))
        if test is None:
            continue
        order = np.argsort(-test[2].max(1), kind="stable")
        wrong = (test[2].argmax(1) != test[0])[order]
        k = np.arange(1, len(wrong) + 1)
        ax.plot(k / len(wrong), np.cumsum(wrong) / k, label=entry.label)
    ax.set(xlabel="coverage (share of images kept, most confident first)", ylabel="error rate of the kept images",
           xlim=(0, 1), title="Risk-coverage on test")
    ax.legend(fontsize=8)
    return fig


# --------------------------------------------------------------------------- markdown
def generalisation_markdown(res: ExperimentResults, table: pd.DataFrame, figures: dict[str, str],
                            confidence: float = stats.DEFAULT_CONFIDENCE) -> list[str]:
    """The section: one table per external set, its verdict, and the figures."""
    from bench.report.markdown import _link, _pct, md_table

    sets = external_sets(res)
    if not sets or not len(table):
        return []
    level = round(100 * confidence)
    lines = ["", "## How the models travel", "",
             "Balanced accuracy on this experiment's test set and on other labs' cells (bench-evaluate), the drop "
             f"with its {level}% bootstrap interval (both sets resampled), ECE before -> after the temperature fitted "
             "on validation, and the share of cells the referral threshold (chosen on validation for "
             "referral.target_acc) sends to a person. Classes a set lacks are left out of its numbers."]
    for name in sets:
        if f"{name}_bal_acc" not in table:
            continue
        rows = []
        for r in table.to_dict("records"):
            if pd.isna(r.get(f"{name}_bal_acc")):
                continue
            rows.append({"model": r["label"], "test bal acc %": _pct(r.get("test_bal_acc")),
                         f"{name} bal acc %": _pct(r.get(f"{name}_bal_acc")),
                         f"drop % ({level}% CI)": f"{_pct(r.get(f'{name}_drop'))} ({_pct(r.get(f'{name}_drop_low'))} "
                                                 f"to {_pct(r.get(f'{name}_drop_high'))})",
                         "ECE test %": _arrow(r.get("test_ece"), r.get("test_ece_ts")),
                         f"ECE {name} %": _arrow(r.get(f"{name}_ece"), r.get(f"{name}_ece_ts")),
                         "referred test %": _pct(r.get("test_referred"), 1),
                         f"referred {name} %": _pct(r.get(f"{name}_referred"), 1)})
        verdict = rank_agreement(table, name)["verdict"]
        lines += ["", f"### {name}", "", md_table(pd.DataFrame(rows)), "", f"*Verdict:* {verdict}."]
    for key, alt in (("travel_reliability", "reliability diagram of the top models on test"),
                     ("travel_risk_coverage", "risk-coverage curves of the top models on test")):
        if key in figures:
            lines += ["", _link(key, alt)]
    return lines


def _arrow(raw, scaled) -> str:
    from bench.report.markdown import _pct

    return "-" if raw is None or pd.isna(raw) else f"{_pct(raw)} -> {_pct(scaled)}"


def source_markdown(res: ExperimentResults) -> list[str]:
    """data=multi_source: each run's validation and test balanced accuracy per source (metrics.json
    ``by_source``), beside the pooled test number; nothing for single-source experiments."""
    from bench.report.markdown import _pct, md_table

    runs = [e for e in res.runs if e.metrics.get("by_source")]
    if not runs:
        return []
    rows = []
    for e in runs:
        row = {"model": e.label, "test bal acc % (pooled)": _pct((e.metrics.get("test") or {}).get("balanced_accuracy"))}
        for split in ("val", "test"):
            for source, scores in (e.metrics["by_source"].get(split) or {}).items():
                row[f"{split} {source} (n={scores['n']}) %"] = _pct(scores.get("balanced_accuracy"))
        rows.append(row)
    held = sorted({s for e in runs for s in e.metrics["by_source"].get("test") or {}}
                  - {s for e in runs for s in e.metrics["by_source"].get("val") or {}})
    note = (f" The test set is the held-out source ({', '.join(held)}): never seen in training or validation."
            if held else "")
    return ["", "## By source", "", "Balanced accuracy of each lab's images (data=multi_source), over the "
            "classes that lab has." + note, "", md_table(pd.DataFrame(rows).fillna("-"))]
