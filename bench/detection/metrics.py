"""Detection metrics from pycocotools, and the count error a lab reads a differential count with.

The run writes the split's ground truth as a COCO file and its predictions as COCO results, so
anyone can recompute every number with pycocotools; :func:`coco_metrics` computes them from
those same two objects: mAP@[.5:.95], AP50, AP75, AR@100 and the AP of each class.

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
        for (x0, y0, x1, y1), label in zip(np.asarray(im.boxes, float).tolist(), im.labels):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": index[label],
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
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


def coco_metrics(ground_truth: dict, results: list[dict]) -> dict:
    """mAP@[.5:.95], AP50, AP75, AR@100 and per-class AP (by category name), from pycocotools."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = {c["id"]: c["name"] for c in ground_truth["categories"]}
    empty = {"map": 0.0, "ap50": 0.0, "ap75": 0.0, "ar100": 0.0, "per_class_ap": {n: 0.0 for n in names.values()}}
    if not results or not ground_truth["annotations"]:
        return empty
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and summary
        gt = COCO()
        gt.dataset = ground_truth
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # (iou thresholds, recall points, classes, areas, max dets)
    per_class = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        per_class[names[cat_id]] = float(p[p > -1].mean()) if (p > -1).any() else 0.0
    stats = [max(float(v), 0.0) for v in ev.stats]  # -1 = undefined (no such objects)
    return {"map": stats[0], "ap50": stats[1], "ap75": stats[2], "ar100": stats[8], "per_class_ap": per_class}


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
