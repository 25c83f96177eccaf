"""Detection metrics with known answers, end to end through the harness's own readers and writers.

Comparing the reported mAP with pycocotools on the files the code wrote cannot catch a writer
that puts boxes in the wrong format (xyxy where COCO reads xywh) or shifts a category id: both
sides read the same wrong file. Here the answers are worked out by hand from the boxes the
tests write: the annotations go in through ``read_coco``, predictions come out of a scripted
detector as the real one gives them (pixel xyxy, labels 1..C, scores), and ``evaluate_splits``
writes the COCO files and scores them, as a run does. The session's detector run is then checked
against pycocotools on its own files, and its count error and thresholds by hand.

IoU by hand for a 20 x 20 px true box and the same box moved right by d px: overlap (20 - d) x 20,
union 800 - (20 - d) x 20; d = 1: 380 / 420 = 0.905, d = 3: 340 / 460 = 0.739, d = 8: 240 / 560 = 0.429.
With one true box and one prediction, AP at an IoU threshold is 1 when the IoU reaches it and 0
otherwise, so mAP over the ten thresholds 0.50, 0.55 ... 0.95 is the share of thresholds reached."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from bench import runs
from bench.detection.data import Boxes, read_coco
from bench.detection.metrics import coco_ground_truth, coco_metrics, coco_results
from bench.training import detector as det_fit



CLASSES = ["rbc", "wbc"]  # label 1 = rbc, 2 = wbc (0 is the background)


TRUE_WBC = [100.0, 100.0, 120.0, 120.0]  # xyxy, far from the origin: xyxy read as xywh would be 120 px wide


def _coco_root(tmp_path, objects_per_field: dict, crowd=()) -> Path:
    """A COCO folder written by hand (bbox as x, y, width, height) with 200 x 200 fields."""
    root = tmp_path / "coco"
    root.mkdir()
    images, anns = [], []
    for i, (name, objects) in enumerate(objects_per_field.items(), start=1):
        Image.new("RGB", (200, 200), (230, 220, 200)).save(root / name)
        images.append({"id": i, "file_name": name, "width": 200, "height": 200})
        for (x0, y0, x1, y1), label in objects:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": CLASSES.index(label) + 1,
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
        for x0, y0, x1, y1 in crowd if i == 1 else ():
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                         "area": (x1 - x0) * (y1 - y0), "iscrowd": 1})
    (root / "instances.json").write_text(json.dumps({
        "images": images, "annotations": anns, "categories": [{"id": k + 1, "name": c} for k, c in enumerate(CLASSES)]}))
    return root


def _evaluate(tmp_path, monkeypatch, truth_root, predictions: dict, max_detections: int = 300) -> dict:
    """evaluate_splits on the fields of ``truth_root`` (val and test: the same fields) with the scripted
    predictions ``{split: [per field: [(xyxy, label name, score), ...]]}``; returns the run's results. The
    run's classes are CLASSES, as when the training fields hold both."""
    dset = read_coco(truth_root)
    samples = {s: [(torch.zeros(3, im.height, im.width, dtype=torch.uint8), im) for im in dset.images]
               for s in ("val", "test")}

    def scripted(model, split_samples, *args, **kwargs):
        split = "val" if split_samples is samples["val"] else "test"
        return [{"boxes": np.asarray([b for b, _, _ in field], float).reshape(-1, 4),
                 "labels": np.asarray([CLASSES.index(lab) + 1 for _, lab, _ in field], int),
                 "scores": np.asarray([s for _, _, s in field], float)} for field in predictions[split]]

    monkeypatch.setattr(det_fit, "predict", scripted)
    tcfg = OmegaConf.create({"eval_batch_size": 4, "max_batches": None})
    out = det_fit.evaluate_splits(None, samples, CLASSES, runs.RunDir(tmp_path / "run"), "cpu", tcfg,
                                  max_detections=max_detections)
    for split in ("val", "test"):  # the files were written, in COCO's xywh, for anyone to recompute
        assert (tmp_path / "run" / f"predictions_{split}.json").is_file()
    return out


def _moved(box, dx: float) -> list[float]:
    return [box[0] + dx, box[1], box[2] + dx, box[3]]


@pytest.mark.known_answer
def test_perfect_predictions_score_map_1(tmp_path, monkeypatch):
    fields = {"a.png": [(TRUE_WBC, "wbc"), ([10, 10, 30, 34], "rbc")], "b.png": [([150, 20, 180, 44], "rbc")]}
    root = _coco_root(tmp_path, fields)
    perfect = [[(box, label, 0.9) for box, label in objects] for objects in fields.values()]
    test = _evaluate(tmp_path, monkeypatch, root, {"val": perfect, "test": perfect})["test"]
    assert (test["map"], test["ap50"], test["ap75"]) == (1.0, 1.0, 1.0)
    assert test["per_class_ap"] == pytest.approx({"rbc": 1.0, "wbc": 1.0})  # 101 recall points: 1 - 2e-16
    assert test["count_error"] == 0.0


@pytest.mark.known_answer
@pytest.mark.parametrize("dx, ap50, ap75, mean_ap", [
    (1, 1.0, 1.0, 0.9),  # IoU 0.905: every threshold up to 0.90 (9 of 10)
    (3, 1.0, 0.0, 0.5),  # IoU 0.739: 0.50 ... 0.70 (5 of 10)
    (8, 0.0, 0.0, 0.0),  # IoU 0.429: none
])
def test_a_box_moved_by_a_known_amount_lands_on_the_hand_computed_side_of_each_threshold(
        tmp_path, monkeypatch, dx, ap50, ap75, mean_ap):
    root = _coco_root(tmp_path, {"a.png": [(TRUE_WBC, "wbc")]})
    moved = [[(_moved(TRUE_WBC, dx), "wbc", 0.9)]]
    test = _evaluate(tmp_path, monkeypatch, root, {"val": moved, "test": moved})["test"]
    assert test["ap50"] == pytest.approx(ap50) and test["ap75"] == pytest.approx(ap75)
    assert test["map"] == pytest.approx(mean_ap)


@pytest.mark.known_answer
def test_the_right_box_with_the_wrong_class_scores_0_for_the_true_class_and_undefined_without_truth(
        tmp_path, monkeypatch):
    root = _coco_root(tmp_path, {"a.png": [(TRUE_WBC, "wbc")], "b.png": [([10, 10, 30, 30], "wbc")]})
    wrong = [[(TRUE_WBC, "rbc", 0.9)], [([10, 10, 30, 30], "rbc", 0.8)]]
    # rbc is a class of the run (declared in the COCO categories) but no field holds one
    test = _evaluate(tmp_path, monkeypatch, root, {"val": wrong, "test": wrong})["test"]
    assert test["per_class_ap"]["wbc"] == 0.0
    assert test["per_class_ap"]["rbc"] is None  # undefined, not 0.0
    assert test["map"] == 0.0  # the mean over the classes with truth: wbc alone


@pytest.mark.known_answer
def test_a_class_absent_from_the_fields_is_undefined_and_left_out_of_the_mean(tmp_path, monkeypatch):
    """wbc found perfectly, rbc absent from the fields but predicted once: mAP is wbc's 1.0 and rbc's AP is
    undefined (pycocotools' -1), not a 0.0 that a table would average in."""
    root = _coco_root(tmp_path, {"a.png": [(TRUE_WBC, "wbc")]})
    preds = [[(TRUE_WBC, "wbc", 0.9), ([10, 10, 30, 30], "rbc", 0.8)]]
    test = _evaluate(tmp_path, monkeypatch, root, {"val": preds, "test": preds})["test"]
    assert test["per_class_ap"]["rbc"] is None and test["per_class_ap"]["wbc"] == pytest.approx(1.0)
    assert test["map"] == pytest.approx(1.0)


@pytest.mark.known_answer
def test_the_count_error_of_a_hand_made_field_at_the_thresholds_chosen_on_validation(tmp_path, monkeypatch):
    """One field: 3 rbc, 1 wbc. Validation scores: rbc 0.9, 0.8, 0.7, 0.2 -> right (3) from 0.25 to 0.70,
    the lowest grid value 0.25; wbc 0.9, 0.3 -> right (1) from 0.35. Test scores rbc 0.9, 0.6, 0.3, 0.24
    -> 3 kept at 0.25 (error 0); wbc 0.5, 0.4 -> 2 kept at 0.35 (error 1): mean (0 + 1) / 2 = 0.5."""
    cells = [([10, 10, 30, 30], "rbc"), ([40, 10, 60, 30], "rbc"), ([70, 10, 90, 30], "rbc"), (TRUE_WBC, "wbc")]
    root = _coco_root(tmp_path, {"a.png": cells})
    box = [10, 10, 30, 30]
    val = [[(box, "rbc", s) for s in (0.9, 0.8, 0.7, 0.2)] + [(box, "wbc", s) for s in (0.9, 0.3)]]
    test = [[(box, "rbc", s) for s in (0.9, 0.6, 0.3, 0.24)] + [(box, "wbc", s) for s in (0.5, 0.4)]]
    out = _evaluate(tmp_path, monkeypatch, root, {"val": val, "test": test})
    assert out["score_threshold"] == {"rbc": 0.25, "wbc": 0.35}
    assert out["test"]["count_error"] == 0.5
    assert out["test"]["count_error_per_class"] == {"rbc": 0.0, "wbc": 1.0}


# --------------------------------------------------------------------------- crowds and the cap
@pytest.mark.known_answer
def test_coco_crowd_boxes_are_ignore_regions_not_false_positives(tmp_path, monkeypatch):
    """One wbc and a crowd region (iscrowd 1) of red cells. A prediction on the crowd at 0.95 and the wbc at
    0.9: ignored, AP 1.0 for both classes' truth; with the crowd dropped it was a false positive ranked first:
    precision 1/2 at full recall, AP 0.5."""
    crowd = [150.0, 150.0, 190.0, 190.0]
    root = _coco_root(tmp_path, {"a.png": [(TRUE_WBC, "wbc"), ([10, 10, 30, 30], "rbc")]}, crowd=[crowd])
    dset = read_coco(root)
    assert dset.images[0].ignore.tolist() == [crowd] and dset.images[0].labels == ["wbc", "rbc"]
    preds = [[([155, 152, 185, 188], "rbc", 0.95), (TRUE_WBC, "wbc", 0.9), ([10, 10, 30, 30], "rbc", 0.8)]]
    test = _evaluate(tmp_path, monkeypatch, root, {"val": preds, "test": preds})["test"]
    assert test["per_class_ap"] == pytest.approx({"rbc": 1.0, "wbc": 1.0})
    gt = json.loads((tmp_path / "run" / "ground_truth_test.json").read_text())
    assert [a["iscrowd"] for a in gt["annotations"]] == [0, 0, 1]


def _grid(n: int) -> list[list[float]]:
    """n disjoint 8 x 8 boxes on a 200 x 200 field (rows of 15)."""
    return [[12.0 * (k % 15), 12.0 * (k // 15), 12.0 * (k % 15) + 8, 12.0 * (k // 15) + 8] for k in range(n)]


@pytest.mark.known_answer
def test_150_perfect_boxes_score_map_1_under_the_default_cap():
    """A crowded field: COCO's maxDets=100 kept 100 of 150 perfect boxes (recall 2/3, mAP 0.663)."""
    field = Boxes("f.png", 200, 200, np.asarray(_grid(150), np.float32), ["rbc"] * 150)
    gt = coco_ground_truth([field], CLASSES)
    res = coco_results([{"boxes": field.boxes, "labels": np.ones(150, int), "scores": np.linspace(0.99, 0.5, 150)}])
    assert coco_metrics(gt, res, max_detections=300)["map"] == 1.0
    assert coco_metrics(gt, res, max_detections=100)["map"] < 0.7  # the old cap, said outright


@pytest.mark.known_answer
def test_a_field_that_reaches_the_cap_is_named(tmp_path, monkeypatch):
    boxes = _grid(40)
    root = _coco_root(tmp_path, {"crowded.png": [(b, "rbc") for b in boxes], "sparse.png": [(TRUE_WBC, "wbc")]})
    preds = [[(b, "rbc", 0.9) for b in boxes], [(TRUE_WBC, "wbc", 0.9)]]
    out = _evaluate(tmp_path, monkeypatch, root, {"val": preds, "test": preds}, max_detections=40)
    assert out["test"]["fields_at_cap"] == ["crowded.png"] and out["val"]["fields_at_cap"] == ["crowded.png"]
    assert out["max_detections"] == 40
    assert any("crowded.png" in w and "model.max_detections" in w for w in out["warnings"])


@pytest.mark.known_answer
def test_a_detector_run_is_built_and_scored_with_the_cap(detector_run):
    from bench.training.checkpoints import rebuild_model

    _, rd = detector_run
    metrics = runs.read_json(rd.metrics)
    assert metrics["max_detections"] == 300
    model = rebuild_model(torch.load(rd.best_ckpt, weights_only=True))
    assert model.roi_heads.detections_per_img == 300  # torchvision's default is 100


# --------------------------------------------------------------------------- a detector run
def test_the_reported_map_is_pycocotools_on_the_written_files(detector_run):
    """At the run's cap (model.max_detections, 300) as COCO's maxDets; pycocotools' summary reads AP50,
    AP75 and the ARs at it, but mAP@[.5:.95] always at 100 detections, so mAP is the mean of its
    precision array at the cap (summarize's own formula)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    _, rd = detector_run
    metrics = runs.read_json(rd.metrics)
    assert metrics["task"] == "detection" and metrics["classes"] == ["platelet", "rbc", "wbc"]
    cap = metrics["max_detections"]
    for split in ("val", "test"):
        gt = COCO(str(rd.root / f"ground_truth_{split}.json"))
        results = json.loads((rd.root / f"predictions_{split}.json").read_text())
        if not results:
            assert metrics[split]["map"] == 0.0
            continue
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.params.maxDets = [1, 100, cap]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        precision = ev.eval["precision"][:, :, :, 0, 2]
        assert metrics[split]["map"] == pytest.approx(precision[precision > -1].mean())
        assert metrics[split]["ap50"] == pytest.approx(max(ev.stats[1], 0.0))
        assert metrics[split]["ap75"] == pytest.approx(max(ev.stats[2], 0.0))
        assert metrics[split]["ar100"] == pytest.approx(max(ev.stats[7], 0.0))
        assert metrics[split]["ar_max"] == pytest.approx(max(ev.stats[8], 0.0))


@pytest.mark.known_answer
def test_count_error_by_hand_at_the_threshold_chosen_on_validation(detector_run):
    _, rd = detector_run
    metrics = runs.read_json(rd.metrics)
    thresholds = metrics["score_threshold"]  # one per class, chosen on validation
    assert set(thresholds) == set(metrics["classes"])
    gt = json.loads((rd.root / "ground_truth_test.json").read_text())
    res = json.loads((rd.root / "predictions_test.json").read_text())
    errors = []
    for image in gt["images"]:
        for cat in gt["categories"]:
            true = sum(a["image_id"] == image["id"] and a["category_id"] == cat["id"] for a in gt["annotations"])
            pred = sum(r["image_id"] == image["id"] and r["category_id"] == cat["id"]
                       and r["score"] >= thresholds[cat["name"]] for r in res)
            errors.append(abs(pred - true))
    assert metrics["test"]["count_error"] == pytest.approx(np.mean(errors))


def test_each_class_gets_the_threshold_with_its_smallest_validation_count_error():
    """Two classes on two images: a score 0.9 wbc, true; a 0.4 wbc, false; rbc boxes at 0.3 and 0.2, both
    true. By hand: wbc is counted right from 0.45 to 0.9 (lowest 0.45), rbc only at <= 0.2 (0.05, the lowest)."""
    from bench.detection.metrics import choose_thresholds, count_error

    images = [Boxes("a", 10, 10, np.zeros((2, 4)), ["wbc", "rbc"]), Boxes("b", 10, 10, np.zeros((1, 4)), ["rbc"])]
    preds = [{"labels": np.array([2, 2, 1]), "scores": np.array([0.9, 0.4, 0.3])},
             {"labels": np.array([1]), "scores": np.array([0.2])}]
    assert choose_thresholds(images, preds, ["rbc", "wbc"]) == {"rbc": 0.05, "wbc": 0.45}
    assert count_error(images, preds, ["rbc", "wbc"], {"rbc": 0.05, "wbc": 0.45})["mean"] == 0.0
    # one threshold for both (0.25): rbc loses image b's box, wbc keeps the false one -> (1 + 1) / 4
    assert count_error(images, preds, ["rbc", "wbc"], 0.25)["mean"] == 0.5


def test_score_thresholds_are_chosen_on_validation_never_on_test(tmp_path, monkeypatch):
    """One wbc per field. Validation scores 0.9 and 0.3: counted right from 0.35 up (the lowest such grid
    value, 0.05 steps); test scores 0.9 and 0.8 would ask for 0.85. The run must take 0.35 and then count
    test's two boxes against its one cell."""

    box = np.array([[1.0, 1.0, 8.0, 8.0]])
    samples = {s: [(torch.zeros(3, 10, 10, dtype=torch.uint8), Boxes(f"{s}.png", 10, 10, box, ["wbc"]))]
               for s in ("val", "test")}
    scores = {"val": [0.9, 0.3], "test": [0.9, 0.8]}

    def scripted(model, split_samples, *a, **k):
        split = "val" if split_samples is samples["val"] else "test"
        return [{"boxes": np.repeat(box, 2, axis=0), "labels": np.array([1, 1]), "scores": np.array(scores[split])}]

    monkeypatch.setattr(det_fit, "predict", scripted)
    out = det_fit.evaluate_splits(None, samples, ["wbc"], runs.RunDir(tmp_path), "cpu",
                                  OmegaConf.create({"eval_batch_size": 2, "max_batches": None}), 300)
    assert out["score_threshold"] == {"wbc": 0.35}
    assert out["val"]["count_error"] == 0.0 and out["test"]["count_error"] == 1.0
