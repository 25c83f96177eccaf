"""The differential count of a chain run (``counts.csv``) and its ``summary.md``.

``counts.csv`` has one row per field (and ``ALL_FIELDS`` for the total), group and label:

- group ``detected``: every detector label, the number of boxes kept at the score threshold and
  their percentage of the field's boxes;
- group ``typed``: every class of the classifier(s), the cells typed as it and their percentage of
  the field's typed cells: the differential count.

A share of n cells is a sample: ``percent_low`` and ``percent_high`` are its exact (Clopper-Pearson)
95 % interval (60 neutrophils of 100 typed cells: 50-70 %, the binomial limits of Rumke's table).

Zero counts are written too, so a field where nothing was found shows as zeros, not as a gap.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from bench.metrics.statistics import proportion_interval

ALL_FIELDS = "(all fields)"
GROUPS = ("detected", "typed")


def count_table(cells: pd.DataFrame, fields: Sequence[str], detector_labels: Sequence[str],
                classes: Sequence[str], seen: dict | None = None) -> pd.DataFrame:
    """Counts and percentages per field and in total, for every detector label and class;
    ``seen_by_detector``: the field was in the detector's training or validation split (the total:
    any was; empty when that could not be checked)."""
    rows = []
    typed = cells[cells["classified"].astype(bool)]
    for name in [*fields, ALL_FIELDS]:
        here = cells if name == ALL_FIELDS else cells[cells["field"] == name]
        here_typed = typed if name == ALL_FIELDS else typed[typed["field"] == name]
        for group, column, labels, frame in (("detected", "detector_label", detector_labels, here),
                                              ("typed", "cell_type", classes, here_typed)):
            counts = frame[column].value_counts()
            total = len(frame)
            for label in labels:
                n = int(counts.get(label, 0))
                low, high = proportion_interval(n, total)  # the share is a sample: exact 95 % limits
                rows.append({"field": name, "group": group, "label": label, "count": n,
                             "percent": round(100.0 * n / total, 2) if total else np.nan,
                             "percent_low": round(100.0 * low, 2) if total else np.nan,
                             "percent_high": round(100.0 * high, 2) if total else np.nan})
    table = pd.DataFrame(rows, columns=["field", "group", "label", "count", "percent", "percent_low", "percent_high"])
    if seen is None:
        table["seen_by_detector"] = pd.Series([None] * len(table), dtype=object)
    else:
        table["seen_by_detector"] = [bool(seen) if f == ALL_FIELDS else f in seen for f in table["field"]]
    return table


def _table(frame: pd.DataFrame) -> list[str]:
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |")
    return lines


def summary_markdown(summary: dict, counts: pd.DataFrame, metrics: dict | None) -> str:
    """A page a person reads first: what ran, the total differential count, the scoring if any."""
    s = summary
    seen = s.get("seen_fields") or []
    title = "# Differential count of smear fields" + (
        f" ({len(seen)} of them seen by the detector in training or validation: optimistic)" if seen else "")
    lines = [title, "",
             f"- fields: {s['n_fields']} read, {s['n_unreadable']} unreadable (unreadable.csv), "
             f"from `{s['fields_dir']}`",
             f"- detector: {s['detector']['model']} (`{s['detector']['path']}`), score thresholds "
             + ", ".join(f"{k} {v:.2f}" for k, v in s["detector"]["score_thresholds"].items())
             + f": {s['detector']['threshold_source']}; at most {s['detector'].get('max_detections', 100)} boxes per "
             f"field ({len(s.get('fields_at_cap') or [])} field(s) reached that)",
             f"- typed labels: {', '.join(s['classify_labels']) or 'none'} ({s['classify_labels_rule']}); "
             + (f"crops of {s['crop_size']} field pixels square" if s.get("crop_size") else
                f"crops with a margin of {s['margin']:.2f} of the box on each side")]
    for label, clf in s["classifiers"].items():
        lines.append(f"- classifier for {label}: {', '.join(clf['models'])} ({clf['method']}) from `{clf['source']}`")
    lines.append(f"- {s['n_cells']} cells found, {s['n_typed']} typed, {s['n_low_confidence']} of them low-confidence; "
                 f"{s['seconds']:.1f} s ({s['fields_per_s']:.2f} fields/s on {s['device']})")
    lines += [f"- warning: {w}" for w in s.get("warnings", [])]
    total = counts[counts["field"] == ALL_FIELDS].drop(columns=["field", "seen_by_detector"], errors="ignore")
    lines += ["", "## All fields", "", *_table(total[total["group"] == "typed"].drop(columns="group")), "",
              "Every box the detector kept:", "", *_table(total[total["group"] == "detected"].drop(columns="group")),
              "", "Per field: counts.csv; every cell: cells.csv; pictures: fields/."]
    lines += ["", "Percentages with their exact 95 % interval (percent_low - percent_high): a differential of n cells "
              "is a sample of the smear, not its truth."]
    if metrics:
        lines += ["", "## Against the ground truth", "", *metrics_markdown(metrics)]
    return "\n".join(lines) + "\n"


def metrics_markdown(m: dict) -> list[str]:
    """The scoring (cascade_metrics.json) as a few lines and a per-class table."""
    o = m["overall"]
    lines = [f"Matched at IoU >= {m['iou_threshold']} ({m['level']} level; truth `{m['truth']}`): "
             f"{o['n_true']} true cells, {o['n_pred']} found, {o['matched']} matched, {o['missed']} missed, "
             f"{o['spurious']} spurious; cells matched with the right type: {o['correct']} "
             f"({_pct(o['accuracy_of_matched'])} of matched); count error {o['count_error']:.3f} per field and class (finding nothing: "
             f"{o['count_error_finding_nothing']:.3f})."]
    st = m.get("stages")
    if st:
        lines.append(f"Stages, over the {st['n_true']} true cells of the typed classes: the detector found "
                     f"{st['found']} ({_pct(st['detector_recall'])}), the classifier typed {st['correct']} of those "
                     f"right ({_pct(st['classifier_accuracy'])}); lost at detection {st['lost_at_detection']}, "
                     f"at classification {st['lost_at_classification']}.")
    frame = pd.DataFrame([{"class": c, **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}}
                          for c, d in m["per_class"].items()])
    return [*lines, "", *_table(frame), *agreement_markdown(m.get("agreement") or {})]


def agreement_markdown(agreement: dict) -> list[str]:
    """Per class: Bland-Altman's mean difference of the per-field counts and its 95 % limits, and the
    share of fields whose predicted share lies inside the exact interval of the true one."""
    if not agreement:
        return []
    rows = [{"class": c, "fields": a["n_fields"], "mean difference (pred - true)": _num(a["mean_difference"]),
             "95 % limits": "-" if not a["limits_of_agreement"] else
             f"{a['limits_of_agreement'][0]:.2f} to {a['limits_of_agreement'][1]:.2f}",
             "share inside the true interval": _pct(a["share_inside_true_interval"])} for c, a in agreement.items()]
    return ["", "Per-field counts against the truth (Bland-Altman), and whether each field's predicted share lies "
            "inside the exact 95 % interval of its true share:", "", *_table(pd.DataFrame(rows))]


def _num(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.1f} %"
