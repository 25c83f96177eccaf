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
- a predicted cell matched to no true cell but inside a crowd region of the truth (COCO
  ``iscrowd``) is left out (``ignored_in_crowd_regions``), as COCO's own scoring does;
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
from bench.predict.checkpoints import PredictError

log = logging.getLogger(__name__)

IOU_THRESHOLD = 0.5
LEVELS = ("cell", "detector")


def read_truth(path, fields_dir, label_map: dict | None = None) -> DetectionSet:
    """The annotations of the fields, by format: .json COCO, .csv boxes CSV, a folder VOC; then
    ``--truth-map`` applied, each of its keys a label of the truth (a typo there would leave the
    label it meant unmapped and its cells unscored)."""
    from bench.data.imagefolder import DataError
    from bench.detection.data import read_boxes_csv, read_coco, read_voc, relabel

    path = Path(path)
    try:
        if path.is_dir():
            truth = read_voc(path)
        elif path.suffix.lower() == ".json":
            truth = read_coco(fields_dir, path)
        elif path.suffix.lower() == ".csv":
            truth = read_boxes_csv(fields_dir, path)
        else:
            raise PredictError(f"--truth {path}: not a COCO .json, a boxes .csv (image,xmin,ymin,xmax,ymax,label) "
                               "or a Pascal VOC folder (Annotations/, JPEGImages/).")
    except DataError as exc:
        raise PredictError(f"--truth {path}: {exc}") from exc
    unknown = [key for key in (label_map or {}) if key not in truth.classes]
    if unknown:
        raise PredictError(f"--truth-map names {', '.join(map(repr, unknown))}: not a label of the truth {path} "
                           f"(its labels: {truth.classes}). Map the truth's own labels, e.g. "
                           f"--truth-map {truth.classes[0]}=<our class>.")
    return relabel(truth, label_map) if label_map else truth


def parse_map(text: str | None) -> dict[str, str]:
    """``A=B,C=D`` -> {A: B, C: D}."""
    out = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise PredictError(f"--truth-map: {part!r} is not TRUTH_LABEL=CLASS (e.g. Neutrophil=neutrophil,WBC=wbc).")
        out[key.strip()] = value.strip()
    return out


def check_labels(predicted: Sequence[str], truth_labels: Sequence[str], level: str,
                 detector_labels: Sequence[str] = ()) -> list[str]:
    """An error when none of the labels we score is a truth label (at cell level: the classifier's
    classes), with the ``--score-level`` / ``--truth-map`` that fits; warnings for the labels the
    truth never uses (they can only be spurious)."""
    predicted, truth_labels = sorted(set(predicted)), sorted(set(truth_labels))
    absent = [c for c in predicted if c not in truth_labels]
    if predicted and len(absent) == len(predicted):
        what = "the classifier's classes" if level == "cell" else "the detector's labels"
        raise PredictError(f"{what} {predicted} are none of the truth's labels {truth_labels}, so nothing can be "
                           "scored. Rename the truth's labels with --truth-map TRUTH_LABEL=CLASS[,...]"
                           + (", or score the detector's labels only with --score-level detector (for truth "
                              "without white-cell types)" if level == "cell" else "") + "."
                           + _fitting_options(predicted, truth_labels, level, detector_labels))
    return [f"label(s) {absent} never occur in the truth ({truth_labels}): every cell given them counts as spurious"] \
        if absent else []


def _fitting_options(predicted: Sequence[str], truth_labels: Sequence[str], level: str,
                     detector_labels: Sequence[str]) -> str:
    """What fits this truth: its labels matched to ours regardless of case."""
    ours = {c.lower(): c for c in predicted}
    detector = {c.lower(): c for c in detector_labels}
    if level == "cell" and any(t.lower() in detector for t in truth_labels):
        pairs = [f"{t}={detector[t.lower()]}" for t in truth_labels if t.lower() in detector and t != detector[t.lower()]]
        return (" Here the truth's labels are the detector's, not white-cell types: --score-level detector"
                + (f" --truth-map {','.join(pairs)}" if pairs else "") + ".")
    pairs = [f"{t}={ours[t.lower()]}" for t in truth_labels if t.lower() in ours]
    return f" Here: --truth-map {','.join(pairs)}." if pairs else ""


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


def in_crowd_regions(pred: np.ndarray, true_im, pairs, iou_threshold: float = IOU_THRESHOLD) -> np.ndarray:
    """Per predicted box: matched to no true cell and inside a crowd region of the truth (COCO
    ``iscrowd``) by at least ``iou_threshold`` of its own area: pycocotools' crowd overlap."""
    import torch
    from pycocotools import mask as mask_utils
    from torchvision.ops import box_convert

    out = np.zeros(len(pred), bool)
    crowds = np.asarray(getattr(true_im, "ignore", np.zeros((0, 4))), float).reshape(-1, 4)
    if not len(pred) or not len(crowds):
        return out
    pred_xywh, crowd_xywh = (box_convert(torch.tensor(b, dtype=torch.float64), "xyxy", "xywh").numpy()
                             for b in (pred, crowds))
    overlap = np.asarray(mask_utils.iou(pred_xywh, crowd_xywh, [1] * len(crowds))).reshape(len(pred), -1)
    out[:] = overlap.max(axis=1) >= iou_threshold
    out[[i for i, _ in pairs]] = False
    return out


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


class _Tally:
    """Counts over the scored fields: per class (in ``index`` order) and, for typed classes, per stage."""

    def __init__(self, index: dict[str, int], typed: set[str]):
        self.index, self.typed = index, typed
        n = len(index)
        self.tp, self.n_true, self.n_pred, self.missed, self.spurious = (np.zeros(n, int) for _ in range(5))
        self.count_errors, self.true_counts, self.pred_counts = [], [], []
        self.stages = {"n_true": 0, "found": 0, "correct": 0}

    def add_field(self, pred_labels: list, true_labels: list, pairs: list[tuple[int, int]]) -> np.ndarray:
        """One field's matches; returns its |predicted - true| count per class."""
        index, n = self.index, len(self.index)
        p_matched, t_matched = {i for i, _ in pairs}, {j for _, j in pairs}
        for label in true_labels:
            self.n_true[index[label]] += 1
        for label in pred_labels:
            self.n_pred[index[label]] += 1
        for i, j in pairs:
            if pred_labels[i] == true_labels[j]:
                self.tp[index[true_labels[j]]] += 1
        for j, label in enumerate(true_labels):
            if j not in t_matched:
                self.missed[index[label]] += 1
        for i, label in enumerate(pred_labels):
            if i not in p_matched:
                self.spurious[index[label]] += 1
        true_counts = np.bincount([index[c] for c in true_labels], minlength=n)
        pred_counts = np.bincount([index[c] for c in pred_labels], minlength=n)
        self.count_errors.append(np.abs(pred_counts - true_counts))
        self.true_counts.append(true_counts)
        self.pred_counts.append(pred_counts)
        return self.count_errors[-1]

    def add_stages(self, pred_labels: list, true_labels: list, pairs, classified: list[bool]) -> None:
        """Of the true cells of the typed classes: found by the detector (matched to a typed box), and
        of those, typed right by the classifier."""
        by_true = {j: i for i, j in pairs}
        for j, label in enumerate(true_labels):
            if label not in self.typed:
                continue
            self.stages["n_true"] += 1
            i = by_true.get(j)
            if i is not None and classified[i]:
                self.stages["found"] += 1
                self.stages["correct"] += int(pred_labels[i] == label)

    def per_class(self) -> dict:
        errors = np.array(self.count_errors).reshape(-1, len(self.index))
        return {c: {"n_true": int(self.n_true[k]), "n_pred": int(self.n_pred[k]),
                    "matched_same_class": int(self.tp[k]), "sensitivity": _ratio(self.tp[k], self.n_true[k]),
                    "precision": _ratio(self.tp[k], self.n_pred[k]), "missed": int(self.missed[k]),
                    "spurious": int(self.spurious[k]),
                    "count_error": float(errors[:, k].mean()) if len(errors) else None}
                for c, k in self.index.items()}

    def overall(self) -> dict:
        errors = np.array(self.count_errors).reshape(-1, len(self.index))
        matched = int(self.n_pred.sum() - self.spurious.sum())
        return {"n_fields": len(errors), "n_true": int(self.n_true.sum()), "n_pred": int(self.n_pred.sum()),
                "matched": matched, "missed": int(self.missed.sum()), "spurious": int(self.spurious.sum()),
                "correct": int(self.tp.sum()), "accuracy_of_matched": _ratio(self.tp.sum(), matched),
                "count_error": float(errors.mean()) if errors.size else 0.0,
                # the same for a chain that finds nothing: the mean true count, the number to beat
                "count_error_finding_nothing": float(np.mean(self.true_counts)) if errors.size else 0.0}

    def agreement(self, classes: Sequence[str]) -> dict:
        """Per class, how the per-field counts agree with the truth: Bland-Altman's mean difference
        (predicted - true) and its 95 % limits (mean +- 1.96 sd over fields), and how many fields' predicted
        share of ``classes`` (the differential) lies inside the exact 95 % interval of the true share."""
        from bench.metrics.statistics import proportion_interval

        pred = np.array(self.pred_counts).reshape(-1, len(self.index))
        true = np.array(self.true_counts).reshape(-1, len(self.index))
        cols = [self.index[c] for c in classes if c in self.index]
        out = {}
        for c in classes:
            if c not in self.index:
                continue
            k = self.index[c]
            diff = pred[:, k] - true[:, k]
            sd = float(np.std(diff, ddof=1)) if len(diff) > 1 else float("nan")
            inside, n_fields = 0, 0
            for p_row, t_row in zip(pred, true):
                n_true, n_pred = int(t_row[cols].sum()), int(p_row[cols].sum())
                if not n_true or not n_pred:
                    continue
                low, high = proportion_interval(int(t_row[k]), n_true)
                n_fields += 1
                inside += int(low <= p_row[k] / n_pred <= high)
            out[c] = {"n_fields": int(len(diff)), "mean_difference": float(diff.mean()) if len(diff) else None,
                      "limits_of_agreement": [float(diff.mean() - 1.96 * sd), float(diff.mean() + 1.96 * sd)]
                      if len(diff) > 1 else None,
                      "share_inside_true_interval": _ratio(inside, n_fields), "n_fields_with_shares": n_fields}
        return out

    def stage_summary(self) -> dict:
        st = self.stages
        return {**st, "detector_recall": _ratio(st["found"], st["n_true"]),
                "classifier_accuracy": _ratio(st["correct"], st["found"]),
                "lost_at_detection": st["n_true"] - st["found"], "lost_at_classification": st["found"] - st["correct"]}


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
    staged = level == "cell" and bool(typed_classes)
    tally = _Tally({c: k for k, c in enumerate(classes)}, set(typed_classes))
    by_field = dict(tuple(cells.groupby("field", sort=False))) if len(cells) else {}
    per_field = {}
    ignored = 0
    for f in scored:
        true_im = truth.images[keys[f]]
        here = by_field.get(f, cells.iloc[0:0])
        pairs = match_boxes(here[["xmin", "ymin", "xmax", "ymax"]].to_numpy(float), true_im.boxes, iou_threshold)
        in_crowd = in_crowd_regions(here[["xmin", "ymin", "xmax", "ymax"]].to_numpy(float), true_im, pairs, iou_threshold)
        if in_crowd.any():  # COCO's rule: found in a crowd region and matched to no true cell, left out
            ignored += int(in_crowd.sum())
            here = here[~in_crowd]
            pairs = match_boxes(here[["xmin", "ymin", "xmax", "ymax"]].to_numpy(float), true_im.boxes, iou_threshold)
        pred_labels, true_labels = here[column].tolist(), list(true_im.labels)
        errors = tally.add_field(pred_labels, true_labels, pairs)
        per_field[f] = {c: int(errors[k]) for k, c in enumerate(classes)}
        if staged:
            tally.add_stages(pred_labels, true_labels, pairs, here["classified"].astype(bool).tolist())
    return {"truth": truth_name, "level": level, "iou_threshold": iou_threshold,
            "overall": {**tally.overall(), "ignored_in_crowd_regions": ignored},
            "per_class": tally.per_class(), "stages": tally.stage_summary() if staged else None,
            "agreement": tally.agreement(list(typed_classes) if staged else classes),
            "count_error_per_field": per_field, "fields_without_truth": [f for f in fields if f not in keys],
            "truth_images_without_field": sorted({im.path for im in truth.images} - {truth.images[keys[f]].path
                                                                                       for f in scored}),
            "warnings": warnings}


def label_metrics(metrics: dict, seen_fields, notes: list[str]) -> dict:
    """cascade_metrics.json labelled with what its reader must know: the fields the detector saw in
    training (``--allow-seen-fields``) and the run's notes, first among its warnings."""
    metrics.update(seen_fields=sorted(seen_fields or []), warnings=[*notes, *metrics["warnings"]])
    return metrics


def _ratio(a, b) -> float | None:
    return float(a) / float(b) if b else None
