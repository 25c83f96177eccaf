"""Detection metrics with known answers, end to end through the harness's own readers and writers.

Comparing the reported mAP with pycocotools on the files the code wrote cannot catch a writer
that puts boxes in the wrong format (xyxy where COCO reads xywh) or shifts a category id: both
sides read the same wrong file. Here the answers are worked out by hand from the boxes the
tests write: the annotations go in through ``read_coco``, predictions come out of a scripted
detector as the real one gives them (pixel xyxy, labels 1..C, scores), and ``evaluate_splits``
writes the COCO files and scores them, as a run does.

IoU by hand for a 20 x 20 px true box and the same box moved right by d px: overlap (20 - d) x 20,
union 800 - (20 - d) x 20; d = 1: 380 / 420 = 0.905, d = 3: 340 / 460 = 0.739, d = 8: 240 / 560 = 0.429.
With one true box and one prediction, AP at an IoU threshold is 1 when the IoU reaches it and 0
otherwise, so mAP over the ten thresholds 0.50, 0.55 ... 0.95 is the share of thresholds reached.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from bench import runs
from bench.training import detector as det_fit
from bench.detection.data import Boxes, read_coco
from bench.detection.metrics import coco_ground_truth, coco_metrics, coco_results

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


def test_perfect_predictions_score_map_1(tmp_path, monkeypatch):
    fields = {"a.png": [(TRUE_WBC, "wbc"), ([10, 10, 30, 34], "rbc")], "b.png": [([150, 20, 180, 44], "rbc")]}
    root = _coco_root(tmp_path, fields)
    perfect = [[(box, label, 0.9) for box, label in objects] for objects in fields.values()]
    test = _evaluate(tmp_path, monkeypatch, root, {"val": perfect, "test": perfect})["test"]
    assert (test["map"], test["ap50"], test["ap75"]) == (1.0, 1.0, 1.0)
    assert test["per_class_ap"] == pytest.approx({"rbc": 1.0, "wbc": 1.0})  # 101 recall points: 1 - 2e-16
    assert test["count_error"] == 0.0


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


def test_the_right_box_with_the_wrong_class_scores_0_for_the_true_class_and_undefined_without_truth(
        tmp_path, monkeypatch):
    root = _coco_root(tmp_path, {"a.png": [(TRUE_WBC, "wbc")], "b.png": [([10, 10, 30, 30], "wbc")]})
    wrong = [[(TRUE_WBC, "rbc", 0.9)], [([10, 10, 30, 30], "rbc", 0.8)]]
    # rbc is a class of the run (declared in the COCO categories) but no field holds one
    test = _evaluate(tmp_path, monkeypatch, root, {"val": wrong, "test": wrong})["test"]
    assert test["per_class_ap"]["wbc"] == 0.0
    assert test["per_class_ap"]["rbc"] is None  # undefined, not 0.0
    assert test["map"] == 0.0  # the mean over the classes with truth: wbc alone


def test_a_class_absent_from_the_fields_is_undefined_and_left_out_of_the_mean(tmp_path, monkeypatch):
    """wbc found perfectly, rbc absent from the fields but predicted once: mAP is wbc's 1.0 and rbc's AP is
    undefined (pycocotools' -1), not a 0.0 that a table would average in."""
    root = _coco_root(tmp_path, {"a.png": [(TRUE_WBC, "wbc")]})
    preds = [[(TRUE_WBC, "wbc", 0.9), ([10, 10, 30, 30], "rbc", 0.8)]]
    test = _evaluate(tmp_path, monkeypatch, root, {"val": preds, "test": preds})["test"]
    assert test["per_class_ap"]["rbc"] is None and test["per_class_ap"]["wbc"] == pytest.approx(1.0)
    assert test["map"] == pytest.approx(1.0)


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


def test_150_perfect_boxes_score_map_1_under_the_default_cap():
    """A crowded field: COCO's maxDets=100 kept 100 of 150 perfect boxes (recall 2/3, mAP 0.663)."""
    field = Boxes("f.png", 200, 200, np.asarray(_grid(150), np.float32), ["rbc"] * 150)
    gt = coco_ground_truth([field], CLASSES)
    res = coco_results([{"boxes": field.boxes, "labels": np.ones(150, int), "scores": np.linspace(0.99, 0.5, 150)}])
    assert coco_metrics(gt, res, max_detections=300)["map"] == 1.0
    assert coco_metrics(gt, res, max_detections=100)["map"] < 0.7  # the old cap, said outright


def test_a_field_that_reaches_the_cap_is_named(tmp_path, monkeypatch):
    boxes = _grid(40)
    root = _coco_root(tmp_path, {"crowded.png": [(b, "rbc") for b in boxes], "sparse.png": [(TRUE_WBC, "wbc")]})
    preds = [[(b, "rbc", 0.9) for b in boxes], [(TRUE_WBC, "wbc", 0.9)]]
    out = _evaluate(tmp_path, monkeypatch, root, {"val": preds, "test": preds}, max_detections=40)
    assert out["test"]["fields_at_cap"] == ["crowded.png"] and out["val"]["fields_at_cap"] == ["crowded.png"]
    assert out["max_detections"] == 40
    assert any("crowded.png" in w and "model.max_detections" in w for w in out["warnings"])


def test_a_detector_run_is_built_and_scored_with_the_cap(detector_run):
    from bench.training.checkpoints import rebuild_model

    _, rd = detector_run
    metrics = runs.read_json(rd.metrics)
    assert metrics["max_detections"] == 300
    model = rebuild_model(torch.load(rd.best_ckpt, weights_only=True))
    assert model.roi_heads.detections_per_img == 300  # torchvision's default is 100


def test_an_undefined_class_ap_is_empty_in_the_leaderboard_and_a_dash_in_the_report(detector_run, tmp_path):
    """metrics.json's None (a class absent from the test fields) must not turn back into 0.0 downstream."""
    import shutil

    from bench.results import leaderboard as lb
    from bench import report
    from bench.results.rows import class_column

    _, rd = detector_run
    exp = tmp_path / "exp"
    run = exp / "runs" / rd.root.parent.name / rd.root.name
    shutil.copytree(rd.root, run, ignore=shutil.ignore_patterns("*.pt"))
    metrics = runs.read_json(run / "metrics.json")
    metrics["test"]["per_class_ap"]["platelet"] = None
    runs.write_json_atomic(run / "metrics.json", metrics)
    row = lb.build_leaderboard(exp).iloc[0]
    assert row["kind"] == "detector" and np.isnan(row[class_column("platelet")])
    text = report.build_report(exp, tmp_path / "report").read_text()
    header, _, first = [line for line in text.split("## Detection")[1].splitlines() if line.startswith("|")][:3]
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in first.split("|")]))
    assert cells["AP platelet"] == "-" and cells["AP rbc"] != "-"


def test_the_cap_is_set_in_one_place_not_through_detector_kwargs():
    """torchvision's own option would be overridden by model.max_detections (and COCO's maxDets would not
    follow it): naming it is a preflight problem that points to the option."""
    from bench.models.detection_zoo import detector_options_problem

    problem = detector_options_problem("fasterrcnn_mobilenet_v3_large_320_fpn", {"box_detections_per_img": 500})
    assert problem and "model.max_detections=500" in problem
    problem = detector_options_problem("retinanet_resnet50_fpn", {"retinanet": {"detections_per_img": 50}})
    assert problem and "model.max_detections=50" in problem
