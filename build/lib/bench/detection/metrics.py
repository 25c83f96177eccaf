"""Detection metrics from pycocotools, and the count error a lab reads a differential count with.

The run writes the split's ground truth as a COCO file and its predictions as COCO results, so
anyone can recompute every number with pycocotools; :func:`coco_metrics` computes them from
those same two objects: mAP@[.5:.95], AP50, AP75, AR@100 and the AP of each class.

Count error: at a score threshold, per image and class, ``|predicted boxes - true boxes|``; the
mean over images and classes (and per class). The threshold is chosen on validation data (the
one with the smallest validation count error) and only then applied to test.
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


def count_error(images: Sequence, predictions: Sequence[dict], classes: Sequence[str], threshold: float) -> dict:
    """Mean |predicted - true| count per image and class at ``threshold``, overall and per class."""
    n_classes = len(classes)
    index = {c: i for i, c in enumerate(classes)}
    errors = np.zeros((len(images), n_classes))
    for i, (im, p) in enumerate(zip(images, predictions)):
        true = np.bincount([index[label] for label in im.labels], minlength=n_classes)
        keep = np.asarray(p["scores"]) >= threshold
        pred = np.bincount(np.asarray(p["labels"], int)[keep] - 1, minlength=n_classes)
        errors[i] = np.abs(pred - true)
    return {"mean": float(errors.mean()) if errors.size else 0.0,
            "per_class": {c: float(errors[:, j].mean()) if len(errors) else 0.0 for j, c in enumerate(classes)}}


THRESHOLDS = tuple(np.round(np.arange(0.05, 0.96, 0.05), 2))


def choose_threshold(images: Sequence, predictions: Sequence[dict], classes: Sequence[str]) -> float:
    """The score threshold with the smallest count error on these (validation) images; ties: the lowest."""
    errors = [count_error(images, predictions, classes, float(t))["mean"] for t in THRESHOLDS]
    return float(THRESHOLDS[int(np.argmin(errors))])
