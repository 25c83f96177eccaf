"""The report's detection section: a table of the detectors, precision-recall curves per class,
and a few test fields with true and predicted boxes drawn, all read from the run folders' COCO
files (``ground_truth_test.json``, ``predictions_test.json``) and metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from bench.results import rows as leaderboard_rows
from bench.detection.metrics import class_thresholds, coco_evaluation

FIGURES = {"pr": "detection_pr_curves.png", "fields": "detection_fields.png"}


def detection_table(entries) -> pd.DataFrame:
    """One row per detector run in validation order: mAP (val, test), AP50, AP75, AR@100, count error."""
    rows = []
    for e in entries:
        val, test = e.metrics.get("val") or {}, e.metrics.get("test") or {}
        rows.append({"model": e.label, "val mAP": leaderboard_rows._num(val.get("map")), "test mAP": leaderboard_rows._num(test.get("map")),
                     "AP50": leaderboard_rows._num(test.get("ap50")), "AP75": leaderboard_rows._num(test.get("ap75")),
                     "AR@100": leaderboard_rows._num(test.get("ar100")), "count error": leaderboard_rows._num(test.get("count_error")),
                     **{f"AP {c}": leaderboard_rows._num(v) for c, v in (test.get("per_class_ap") or {}).items()}})
    return pd.DataFrame(rows)


def _coco_eval(entry):
    """The run's test files evaluated at its cap (runs before model.max_detections: COCO's 100)."""
    gt = json.loads((entry.root / "ground_truth_test.json").read_text())
    results = json.loads((entry.root / "predictions_test.json").read_text())
    return gt, coco_evaluation(gt, results, int(entry.metrics.get("max_detections") or 100))


def plot_pr_curves(entry):
    """Precision against recall at IoU 0.5 for each class of the best detector (pycocotools' curves)."""
    from bench.report.plots import _figure

    gt, ev = _coco_eval(entry)
    fig = _figure(5.5, 4.0)
    ax = fig.add_subplot()
    if ev is None:
        ax.text(0.5, 0.5, "no predictions", ha="center", va="center", transform=ax.transAxes)
        return fig
    recall = ev.params.recThrs
    names = {c["id"]: c["name"] for c in gt["categories"]}
    for k, cat_id in enumerate(ev.params.catIds):
        precision = ev.eval["precision"][0, :, k, 0, -1]  # IoU 0.5, all areas, at the run's cap
        valid = precision > -1
        ax.plot(recall[valid], precision[valid], label=names[cat_id])
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title=f"{entry.label}: precision-recall at IoU 0.5 (test)")
    ax.legend(fontsize=8)
    return fig


def plot_fields(entry, n: int = 3):
    """The first ``n`` test fields with true boxes (green) and predictions above the validation-chosen
    score threshold (red), for a person to look at."""
    from bench.detection.data import open_field
    from bench.report.plots import _figure

    root = Path(entry.metrics.get("data_root") or ".")
    gt = json.loads((entry.root / "ground_truth_test.json").read_text())
    results = json.loads((entry.root / "predictions_test.json").read_text())
    names = {c["id"]: c["name"] for c in gt["categories"]}
    per_class = dict(zip(names.values(), class_thresholds(entry.metrics.get("score_threshold") or 0.5,
                                                          list(names.values()))))
    images = gt["images"][:n]
    fig = _figure(3.2 * max(len(images), 1), 3.4)
    for i, image in enumerate(images):
        ax = fig.add_subplot(1, max(len(images), 1), i + 1)
        try:
            pil = open_field(root / image["file_name"]).resize((image["width"], image["height"]))
            ax.imshow(np.asarray(pil))
        except OSError:
            ax.text(0.5, 0.5, "image not found", ha="center", va="center", transform=ax.transAxes)
        for ann in (a for a in gt["annotations"] if a["image_id"] == image["id"]):
            x, y, w, h = ann["bbox"]
            ax.add_patch(_rect(x, y, w, h, "lime"))
        for r in (r for r in results
                  if r["image_id"] == image["id"] and r["score"] >= per_class[names[r["category_id"]]]):
            x, y, w, h = r["bbox"]
            ax.add_patch(_rect(x, y, w, h, "red"))
        ax.set_title(Path(image["file_name"]).name, fontsize=8)
        ax.axis("off")
    shown = ", ".join(f"{c} {t:g}" for c, t in per_class.items())
    fig.suptitle(f"{entry.label}: true boxes green, predictions red (scores >= {shown})", fontsize=9)
    return fig


def _rect(x, y, w, h, colour):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, fill=False, edgecolor=colour, linewidth=0.8)
