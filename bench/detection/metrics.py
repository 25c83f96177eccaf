"""Detection metrics from pycocotools, and the count error a lab reads a differential count with.

The run writes the split's ground truth as a COCO file and its predictions as COCO results, so
anyone can recompute every number with pycocotools; :func:`coco_metrics` computes them from
those same two objects: mAP@[.5:.95], AP50, AP75, AR@100 and the AP of each class. COCO counts at
most 100 detections per image (``maxDets``); a smear field holds more cells than that, so the
run's cap (``model.max_detections``, the detector's own limit too) is COCO's as well. A class
with no true box in the split has no AP (None, pycocotools' -1: undefined), not 0.0; the mean
leaves it out, as pycocotools does. Crowd regions (COCO ``iscrowd``) are written as such and
ignored by the evaluation, and are not counted.

Count error: at a score threshold, per image and class, ``|predicted boxes - true boxes|``; the
mean over images and classes (and per class). Each class's threshold is chosen on validation data
(the one with the smallest validation count error of that class) and only then applied to test.
"""

from __future__ import annotations

import contextlib
import io
from typing import Sequence

import numpy as np


def coco_ground_truth(images: Sequence, classes: Sequence[str]) -> dict:
    """A COCO dataset dict (images, annotations, categories) for ``images`` (detection Boxes)."""
    index = {c: i + 1 for i, c in enumerate(classes)}
    out_images, annotations = [], []
    for image_id, im in enumerate(images, start=1):
        out_images.append({"id": image_id, "file_name": im.path, "width": int(im.width), "height": int(im.height)})
        crowds = zip(np.asarray(getattr(im, "ignore", np.zeros((0, 4))), float).reshape(-1, 4).tolist(),
                     getattr(im, "ignore_labels", []))
        for crowd, pairs in ((0, zip(np.asarray(im.boxes, float).tolist(), im.labels)), (1, crowds)):
            for (x0, y0, x1, y1), label in pairs:
                if label in index:  # a crowd of a label no box has is no class of the run
                    annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": index[label],
                                        "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                                        "iscrowd": crowd})
    return {"images": out_images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": c} for i, c in enumerate(classes)]}


def coco_results(predictions: Sequence[dict]) -> list[dict]:
    """COCO results (image_id, category_id, bbox xywh, score) from per-image predictions
    ``{"boxes": (N, 4) xyxy, "labels": (N,) 1..C, "scores": (N,)}`` in image order."""
    out = []
    for image_id, p in enumerate(predictions, start=1):
        for (x0, y0, x1, y1), label, score in zip(np.asarray(p["boxes"], float).tolist(),
                                                  np.asarray(p["labels"]).tolist(), np.asarray(p["scores"]).tolist()):
            out.append({"image_id": image_id, "category_id": int(label), "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "score": float(score)})
    return out


def coco_max_dets(max_detections: int) -> list[int]:
    """COCOeval's three maxDets: its own [1, 10, 100] up to a cap of 100 (a detector that returns at
    most that many boxes is scored the same), else [1, 100, cap]: AP at the cap, AR@100 kept."""
    return [1, 10, 100] if max_detections <= 100 else [1, 100, int(max_detections)]


def coco_evaluation(ground_truth: dict, results: list[dict], max_detections: int):
    """pycocotools' COCOeval of ``results`` against ``ground_truth``, evaluated and accumulated with
    the run's cap as maxDets (None when there is nothing to evaluate)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results or not ground_truth["annotations"]:
        return None
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and summary
        gt = COCO()
        gt.dataset = ground_truth
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.params.maxDets = coco_max_dets(max_detections)
        ev.evaluate()
        ev.accumulate()
    return ev


def coco_metrics(ground_truth: dict, results: list[dict], max_detections: int) -> dict:
    """mAP@[.5:.95], AP50, AP75 (at ``max_detections`` boxes per image), AR@100, AR at the cap and
    per-class AP (by category name; None for a class without true boxes), from pycocotools.

    Read from COCOeval's accumulated arrays as its ``summarize`` reads them (mean over the entries
    that are not -1), at the cap: ``summarize`` scores mAP@[.5:.95] at 100 detections whatever
    ``maxDets`` says (150 perfect boxes in a field: 0.663)."""
    names = {c["id"]: c["name"] for c in ground_truth["categories"]}
    with_truth = {a["category_id"] for a in ground_truth["annotations"] if not a.get("iscrowd")}
    ev = coco_evaluation(ground_truth, results, max_detections)
    if ev is None:  # no prediction: 0 where there was something to find, undefined elsewhere
        found = 0.0 if with_truth else None
        return {"map": found, "ap50": found, "ap75": found, "ar100": found, "ar_max": found,
                "per_class_ap": {n: (0.0 if i in with_truth else None) for i, n in names.items()}}
    precision = ev.eval["precision"][:, :, :, 0, -1]  # (IoU thresholds, recall points, classes), all areas, cap
    recall = ev.eval["recall"][:, :, 0, :]  # (IoU thresholds, classes, maxDets), all areas
    iou = list(np.round(ev.params.iouThrs, 2))
    return {"map": _mean(precision), "ap50": _mean(precision[iou.index(0.5)]),
            "ap75": _mean(precision[iou.index(0.75)]), "ar100": _mean(recall[:, :, ev.params.maxDets.index(100)]),
            "ar_max": _mean(recall[:, :, -1]),
            "per_class_ap": {names[cat_id]: _mean(precision[:, :, k]) for k, cat_id in enumerate(ev.params.catIds)}}


def _mean(values: np.ndarray) -> float | None:
    """pycocotools' average: over the entries that are defined (-1: no true box of the class)."""
    defined = values[values > -1]
    return float(defined.mean()) if defined.size else None


def class_thresholds(threshold, classes: Sequence[str]) -> np.ndarray:
    """One score threshold per class: from a mapping {class: threshold} (missing classes 0.5) or
    one number for all (runs written before per-class thresholds)."""
    if isinstance(threshold, dict) or hasattr(threshold, "items"):
        return np.array([float(threshold.get(c, 0.5)) for c in classes])
    return np.full(len(classes), float(threshold))


def count_error(images: Sequence, predictions: Sequence[dict], classes: Sequence[str], threshold) -> dict:
    """Mean |predicted - true| count per image and class at ``threshold`` (one number, or one per
    class as a mapping), overall and per class."""
    n_classes = len(classes)
    index = {c: i for i, c in enumerate(classes)}
    per_class = class_thresholds(threshold, classes)
    errors = np.zeros((len(images), n_classes))
    for i, (im, p) in enumerate(zip(images, predictions)):
        true = np.bincount([index[label] for label in im.labels], minlength=n_classes)
        labels = np.asarray(p["labels"], int) - 1
        keep = np.asarray(p["scores"]) >= per_class[labels] if len(labels) else np.zeros(0, bool)
        pred = np.bincount(labels[keep], minlength=n_classes)
        errors[i] = np.abs(pred - true)
    return {"mean": float(errors.mean()) if errors.size else 0.0,
            "per_class": {c: float(errors[:, j].mean()) if len(errors) else 0.0 for j, c in enumerate(classes)}}


THRESHOLDS = tuple(np.round(np.arange(0.05, 0.96, 0.05), 2))


def choose_thresholds(images: Sequence, predictions: Sequence[dict], classes: Sequence[str]) -> dict[str, float]:
    """Per class, the score threshold with the smallest count error of that class on these
    (validation) images; ties: the lowest. Per class, because one threshold for all would be
    decided by the most numerous cells (red cells) and could over- or under-count the rare ones."""
    errors = np.array([[count_error(images, predictions, classes, float(t))["per_class"][c] for c in classes]
                       for t in THRESHOLDS])  # (thresholds, classes)
    return {c: float(THRESHOLDS[int(np.argmin(errors[:, j]))]) for j, c in enumerate(classes)}
