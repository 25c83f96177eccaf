"""``bench-report CASCADE_DIR``: the report of a chain run folder, its scoring recomputed from the files.

The scoring is :func:`bench.cascade.scoring.score_cells` on ``cells.csv`` against the truth the
run recorded in ``summary.json`` (path, ``--truth-map``, level), so a folder copied elsewhere or
re-scored after the annotations were corrected gives the current numbers. Writes
``<folder>/report/report.md``, ``cascade_metrics.json`` and a per-class figure (sensitivity and
precision of the chain), and links the first fields' pictures.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bench import runs
from bench.cascade import scoring, tables
from bench.cascade.draw import picture_name

N_PICTURES = 6


def is_cascade_dir(folder) -> bool:
    try:
        return runs.read_json(Path(folder) / "summary.json").get("kind") == "cascade"
    except (OSError, ValueError, AttributeError):
        return False


def build_cascade_report(folder, out_dir=None) -> Path:
    folder = Path(folder)
    out = Path(out_dir) if out_dir is not None else folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    summary = runs.read_json(folder / "summary.json")
    cells = pd.read_csv(folder / "cells.csv")
    cells["classified"] = cells["classified"].astype(bool)
    counts = pd.read_csv(folder / "counts.csv")
    fields = [f for f in dict.fromkeys(counts["field"]) if f != tables.ALL_FIELDS]
    metrics = None
    if summary.get("truth"):
        truth = scoring.read_truth(summary["truth"], summary["fields_dir"], scoring.parse_map(summary.get("truth_map")))
        metrics = scoring.score_cells(cells, fields, truth, level=summary.get("score_level", "cell"),
                                      typed_classes=summary["classes"], truth_name=summary["truth"])
        scoring.label_metrics(metrics, summary.get("seen_fields"), summary.get("notes", []))
        runs.write_text_atomic(out / "cascade_metrics.json", json.dumps(metrics, indent=2))
        runs.write_bytes_atomic(out / "per_class.png", _per_class_png(metrics))
    text = tables.summary_markdown(summary, counts, metrics)
    if metrics:
        text += "\n![sensitivity and precision of the chain per class](per_class.png)\n"
    pictures = [f for f in fields if (folder / "fields" / picture_name(f)).is_file()][:N_PICTURES]
    if pictures:
        text += "\n## Fields\n\n" + "\n".join(f"![{f}](../fields/{picture_name(f)})" for f in pictures) + "\n"
    runs.write_text_atomic(out / "report.md", text)
    return out / "report.md"


def _per_class_png(metrics: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.report.plots import figure_png

    names = [c for c, d in metrics["per_class"].items() if d["n_true"] or d["n_pred"]]
    sens = [metrics["per_class"][c]["sensitivity"] or 0.0 for c in names]
    prec = [metrics["per_class"][c]["precision"] or 0.0 for c in names]
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(names) + 2), 3.5))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], sens, width=0.4, label="sensitivity")
    ax.bar([i + 0.2 for i in x], prec, width=0.4, label="precision")
    ax.set_xticks(list(x), names, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"the chain per class ({metrics['level']} level, IoU >= {metrics['iou_threshold']})")
    ax.legend(loc="lower right")
    fig.tight_layout()
    png = figure_png(fig)
    plt.close(fig)
    return png
