"""Scoring a chain run against annotated fields (``--truth``): what each stage loses.

The truth is any detection format the harness reads (:mod:`bench.detection.data`): a COCO
``.json``, a boxes ``.csv`` (image paths relative to the fields folder) or a Pascal VOC folder;
its labels are cell types, renamed with ``--truth-map`` where they differ from ours.

In every field, predicted cells are matched one-to-one to true cells, whatever their labels, by
the assignment that maximises the total IoU (scipy's ``linear_sum_assignment`` over
torchvision's ``box_iou``), keeping pairs with IoU >= 0.5. Then:

- per class: ``sensitivity`` = true cells of the class matched to a cell given that class / true
  cells of the class; ``precision`` = the same matches / cells given that class; ``missed``
  (true cells matched to nothing), ``spurious`` (predicted cells matched to nothing);
  ``count_error``: mean over fields of |predicted - true| count (overall: over fields and classes,
  beside ``count_error_finding_nothing``, the same for a chain that finds no cell);
- ``level``: ``cell`` compares the chain's final types (the classifier's class for typed boxes,
  the detector label for the others); ``detector`` the detector's labels only (for truth without
  white-cell types);
- ``stages`` (cell level): of the true cells of the typed classes, how many the detector found
  as a typed box (``found``), how many of those the classifier typed right (``correct``): the
  cells lost at detection and at classification.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from bench.detection.data import DetectionSet
from bench.predict import PredictError

log = logging.getLogger(__name__)

IOU_THRESHOLD = 0.5
LEVELS = ("cell", "detector")


def read_truth(path, fields_dir, label_map: dict | None = None) -> DetectionSet:
    """The annotations of the fields, by format: .json COCO, .csv boxes CSV, a folder VOC."""
    from bench.data.imagefolder import DataError
    from bench.detection.data import read_boxes_csv, read_coco, read_voc

    path = Path(path)
    try:
        if path.is_dir():
            return read_voc(path, label_map)
        if path.suffix.lower() == ".json":
            return read_coco(fields_dir, path, label_map)
        if path.suffix.lower() == ".csv":
            return read_boxes_csv(fields_dir, path, label_map)
    except DataError as exc:
        raise PredictError(f"--truth {path}: {exc}") from exc
    raise PredictError(f"--truth {path}: not a COCO .json, a boxes .csv (image,xmin,ymin,xmax,ymax,label) or a "
                       "Pascal VOC folder (Annotations/, JPEGImages/).")


def parse_map(text: str | None) -> dict[str, str]:
    """``A=B,C=D`` -> {A: B, C: D}."""
    out = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise PredictError(f"--truth-map: {part!r} is not TRUTH_LABEL=CLASS (e.g. Neutrophil=neutrophil,WBC=wbc).")
        out[key.strip()] = value.strip()
    return out


def check_labels(predicted: Sequence[str], truth_labels: Sequence[str], level: str) -> list[str]:
    """An error when none of the labels we score is a truth label (at cell level: the classifier's
    classes); warnings for the ones the truth never uses (they can only be spurious)."""
    predicted, truth_labels = sorted(set(predicted)), sorted(set(truth_labels))
    absent = [c for c in predicted if c not in truth_labels]
    if predicted and len(absent) == len(predicted):
        what = "the classifier's classes" if level == "cell" else "the detector's labels"
        raise PredictError(f"{what} {predicted} are none of the truth's labels {truth_labels}, so nothing can be "
                           "scored. Rename the truth's labels with --truth-map TRUTH_LABEL=CLASS[,...]"
                           + (", or score the detector's labels only with --score-level detector (for truth "
                              "without white-cell types)" if level == "cell" else "") + ".")
    return [f"label(s) {absent} never occur in the truth ({truth_labels}): every cell given them counts as spurious"] \
        if absent else []


def match_boxes(pred: np.ndarray, true: np.ndarray, iou_threshold: float = IOU_THRESHOLD) -> list[tuple[int, int]]:
    """One-to-one (pred index, true index) pairs with the largest total IoU, each pair >= the threshold."""
    import torch
    from scipy.optimize import linear_sum_assignment
    from torchvision.ops import box_iou

    if not len(pred) or not len(true):
        return []
    iou = box_iou(torch.tensor(np.asarray(pred, np.float64)).reshape(-1, 4),
                  torch.tensor(np.asarray(true, np.float64)).reshape(-1, 4)).numpy()
    rows, cols = linear_sum_assignment(np.where(iou >= iou_threshold, iou, 0.0), maximize=True)
    return [(int(i), int(j)) for i, j in zip(rows, cols) if iou[i, j] >= iou_threshold]


def field_keys(truth: DetectionSet, fields: Sequence[str]) -> dict[str, int]:
    """Chain field -> truth image index: by path relative to the fields folder, else by file name."""
    by_path = {im.path: i for i, im in enumerate(truth.images)}
    names = pd.Series([Path(im.path).name for im in truth.images])
    unique = {n: i for i, n in enumerate(names) if (names == n).sum() == 1}
    out = {}
    for f in fields:
        if f in by_path:
            out[f] = by_path[f]
        elif Path(f).name in unique:
            out[f] = unique[Path(f).name]
    return out


def score_cells(cells: pd.DataFrame, fields: Sequence[str], truth: DetectionSet, *, level: str = "cell",
                typed_classes: Sequence[str] = (), iou_threshold: float = IOU_THRESHOLD, truth_name: str = "") -> dict:
    """cascade_metrics.json: per class, overall and per stage (see the module docstring)."""
    if level not in LEVELS:
        raise PredictError(f"--score-level {level!r}: one of {', '.join(LEVELS)}.")
    column = "cell_type" if level == "cell" else "detector_label"
    keys = field_keys(truth, fields)
    scope = list(typed_classes) if level == "cell" and typed_classes else cells[column].unique().tolist()
    warnings = check_labels(scope, truth.classes, level)
    scored = [f for f in fields if f in keys]
    # The classes counted: the truth's, what we predicted and (cell level) every class the classifier
    # could have given; at detector level the classifier's classes are not in play.
    classes = sorted(set(truth.classes) | set(cells[column]) | (set(typed_classes) if level == "cell" else set()))
    index = {c: k for k, c in enumerate(classes)}
    tp, n_true, n_pred, missed, spurious = (np.zeros(len(classes), int) for _ in range(5))
    count_errors, true_counts_all = np.zeros((len(scored), len(classes))), np.zeros((len(scored), len(classes)))
    st = {"n_true": 0, "found": 0, "correct": 0}
    typed = set(typed_classes)
    by_field = dict(tuple(cells.groupby("field", sort=False))) if len(cells) else {}
    per_field = {}
    for f_i, f in enumerate(scored):
        true_im = truth.images[keys[f]]
        here = by_field.get(f, cells.iloc[0:0])
        pred_labels = here[column].tolist()
        true_labels = list(true_im.labels)
        pairs = match_boxes(here[["xmin", "ymin", "xmax", "ymax"]].to_numpy(float), true_im.boxes, iou_threshold)
        p_matched = {i for i, _ in pairs}
        t_matched = {j: i for i, j in pairs}
        for label in true_labels:
            n_true[index[label]] += 1
        for label in pred_labels:
            n_pred[index[label]] += 1
        for i, j in pairs:
            if pred_labels[i] == true_labels[j]:
                tp[index[true_labels[j]]] += 1
        for j, label in enumerate(true_labels):
            if j not in t_matched:
                missed[index[label]] += 1
        for i, label in enumerate(pred_labels):
            if i not in p_matched:
                spurious[index[label]] += 1
        true_counts = np.bincount([index[c] for c in true_labels], minlength=len(classes))
        pred_counts = np.bincount([index[c] for c in pred_labels], minlength=len(classes))
        count_errors[f_i] = np.abs(pred_counts - true_counts)
        true_counts_all[f_i] = true_counts
        per_field[f] = {c: int(count_errors[f_i, k]) for k, c in enumerate(classes)}
        if level == "cell" and typed:
            classified = here["classified"].astype(bool).tolist()
            for j, label in enumerate(true_labels):
                if label not in typed:
                    continue
                st["n_true"] += 1
                i = t_matched.get(j)
                if i is not None and classified[i]:
                    st["found"] += 1
                    st["correct"] += int(pred_labels[i] == label)
    per_class = {c: {"n_true": int(n_true[k]), "n_pred": int(n_pred[k]), "matched_same_class": int(tp[k]),
                     "sensitivity": _ratio(tp[k], n_true[k]), "precision": _ratio(tp[k], n_pred[k]),
                     "missed": int(missed[k]), "spurious": int(spurious[k]),
                     "count_error": float(count_errors[:, k].mean()) if len(scored) else None}
                 for c, k in index.items()}
    matched = int(n_pred.sum() - spurious.sum())
    overall = {"n_fields": len(scored), "n_true": int(n_true.sum()), "n_pred": int(n_pred.sum()), "matched": matched,
               "missed": int(missed.sum()), "spurious": int(spurious.sum()), "correct": int(tp.sum()),
               "accuracy_of_matched": _ratio(tp.sum(), matched),
               "count_error": float(count_errors.mean()) if count_errors.size else 0.0,
               # the same for a chain that finds nothing: the mean true count, the number to beat
               "count_error_finding_nothing": float(np.mean(true_counts_all)) if count_errors.size else 0.0}
    stages = None
    if level == "cell" and typed:
        stages = {**st, "detector_recall": _ratio(st["found"], st["n_true"]),
                  "classifier_accuracy": _ratio(st["correct"], st["found"]),
                  "lost_at_detection": st["n_true"] - st["found"], "lost_at_classification": st["found"] - st["correct"]}
    return {"truth": truth_name, "level": level, "iou_threshold": iou_threshold, "overall": overall,
            "per_class": per_class, "stages": stages, "count_error_per_field": per_field,
            "fields_without_truth": [f for f in fields if f not in keys],
            "truth_images_without_field": sorted({im.path for im in truth.images} - {truth.images[keys[f]].path
                                                                                       for f in scored}),
            "warnings": warnings}


def _ratio(a, b) -> float | None:
    return float(a) / float(b) if b else None
