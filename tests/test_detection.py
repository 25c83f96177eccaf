"""Detection: the three annotation formats, every bad-annotation case, the synthetic smears, and a
detector run whose numbers pycocotools recomputes from the files it wrote."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench import runs
from bench.detection.data import read_boxes_csv, read_coco, read_voc

from .conftest import SMALL_DETECTOR as SMALL
from .conftest import compose_cfg

# Three images of 64 x 48 px; boxes in pixels (xmin, ymin, xmax, ymax).
BOXES = {
    "a.png": [((4, 5, 20, 30), "wbc"), ((30, 10, 50, 40), "rbc")],
    "b.png": [((10, 10, 30, 30), "rbc")],
    "c.png": [],  # a negative: no cells
}


def _images(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in BOXES:
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / name)
    return folder


def _coco(root: Path, extra_annotations=(), extra_images=(), extra_categories=()) -> Path:
    cats = [{"id": 1, "name": "wbc"}, {"id": 2, "name": "rbc"}, *extra_categories]
    cid = {c["name"]: c["id"] for c in cats}
    images, anns = [], []
    for i, (name, objs) in enumerate(BOXES.items(), start=1):
        images.append({"id": i, "file_name": name, "width": 64, "height": 48})
        for (x0, y0, x1, y1), label in objs:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cid[label],
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": 1, "iscrowd": 0})
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images + list(extra_images), "annotations": anns + list(extra_annotations),
                                "categories": cats}))
    return path


def _as_dict(dset):
    return {im.path.split("/")[-1]: sorted(zip(np.round(im.boxes, 3).tolist(), im.labels)) for im in dset.images}


def _expected():
    return {name: sorted((list(map(float, box)), label) for box, label in objs) for name, objs in BOXES.items()}


# --------------------------------------------------------------------------- formats
def test_coco_voc_and_csv_read_the_same_boxes(tmp_path):
    coco_root = _images(tmp_path / "coco")
    _coco(coco_root)
    assert _as_dict(read_coco(coco_root)) == _expected()

    voc = tmp_path / "voc"
    _images(voc / "JPEGImages")
    (voc / "Annotations").mkdir()
    for name, objs in BOXES.items():
        objects = "".join(f"<object><name>{label}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
                          f"<ymax>{y1}</ymax></bndbox></object>" for (x0, y0, x1, y1), label in objs)
        (voc / "Annotations" / f"{name[:-4]}.xml").write_text(f"<annotation><filename>{name}</filename>{objects}"
                                                              "</annotation>")
    assert _as_dict(read_voc(voc)) == _expected()
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    for split, stem in (("train", "a"), ("val", "b"), ("test", "c")):
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text(stem + "\n")
    assert {im.path: im.split for im in read_voc(voc).images} == {
        "JPEGImages/a.png": "train", "JPEGImages/b.png": "val", "JPEGImages/c.png": "test"}

    csv_root = _images(tmp_path / "csv")
    rows = [(name, *box, label) for name, objs in BOXES.items() for box, label in objs]
    pd.DataFrame(rows, columns=["image", "xmin", "ymin", "xmax", "ymax", "label"]).to_csv(
        csv_root / "annotations.csv", index=False)
    pixels = read_boxes_csv(csv_root)
    assert {k: v for k, v in _as_dict(pixels).items()} == {k: v for k, v in _expected().items() if v}
    assert "pixel coordinates (detected)" in pixels.report.notes[0]
    # The same boxes as fractions of the image size (bcd's convention).
    frac = [(name, x0 / 64, y0 / 48, x1 / 64, y1 / 48, label) for name, x0, y0, x1, y1, label in rows]
    pd.DataFrame(frac, columns=["image", "xmin", "ymin", "xmax", "ymax", "label"]).to_csv(
        csv_root / "annotations.csv", index=False)
    fractional = read_boxes_csv(csv_root)
    assert "fractions of the image size" in fractional.report.notes[0]
    for a, b in zip(fractional.images, pixels.images):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)


def test_label_map_renames_and_merges(tmp_path):
    root = _images(tmp_path / "coco")
    _coco(root)
    dset = read_coco(root, label_map={"wbc": "cell", "rbc": "cell"})
    assert dset.classes == ["cell"] and dset.class_counts()["cell"] == 3


def test_every_bad_annotation_is_counted_and_skipped_never_a_crash(tmp_path):
    root = _images(tmp_path / "coco")
    Image.new("RGB", (64, 48)).save(root / "d.png")
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    bad = [
        {"id": 100, "image_id": 2, "category_id": 2, "bbox": [5, 5, 0, 10], "iscrowd": 0},  # zero width
        {"id": 101, "image_id": 2, "category_id": 2, "bbox": [40, 30, 40, 40], "iscrowd": 0},  # leaves the image
        {"id": 102, "image_id": 2, "category_id": 2, "bbox": [100, 100, 5, 5], "iscrowd": 0},  # wholly outside
        {"id": 103, "image_id": 99, "category_id": 2, "bbox": [1, 1, 5, 5], "iscrowd": 0},  # no such image
        {"id": 104, "image_id": 2, "category_id": 7, "bbox": [1, 1, 5, 5], "iscrowd": 0},  # no such category
    ]
    extra_images = [{"id": 4, "file_name": "missing.png", "width": 10, "height": 10},
                    {"id": 5, "file_name": "broken.png", "width": 10, "height": 10},
                    {"id": 6, "file_name": "d.png", "width": 64, "height": 48}]
    _coco(root, bad, extra_images, [{"id": 3, "name": "platelet"}])
    dset = read_coco(root)
    counts = dset.report.counts
    assert counts["zero-area or inverted box(es) dropped"] == 1
    assert counts["box(es) clipped to the image"] == 1
    assert counts["box(es) outside the image dropped"] == 1
    assert counts["annotation(s) naming a missing image entry dropped"] == 1
    assert counts["box(es) with an unknown category dropped"] == 1
    assert counts["image(s) missing or unreadable, left out"] == 2
    assert counts["label(s) with no box"] == 1 and dset.report.examples["label(s) with no box"] == ["platelet"]
    paths = sorted(im.path for im in dset.images)
    assert paths == ["a.png", "b.png", "c.png", "d.png"]  # negatives (c, d) kept
    b = next(im for im in dset.images if im.path == "b.png")
    assert b.boxes.tolist() == [[10.0, 10.0, 30.0, 30.0], [40.0, 30.0, 64.0, 48.0]]  # the clipped box


# --------------------------------------------------------------------------- synthetic smears
def test_synthetic_smears_are_deterministic_with_exact_boxes(tmp_path):
    from bench.detection.synthetic import WHITE_TYPES, synthetic_smear_root

    a = synthetic_smear_root(tmp_path / "a", n_fields=6, size=128, seed=3)
    b = synthetic_smear_root(tmp_path / "b", n_fields=6, size=128, seed=3)
    assert (a / "instances.json").read_bytes() == (b / "instances.json").read_bytes()
    assert all((a / "images" / f.name).read_bytes() == f.read_bytes() for f in (b / "images").iterdir())
    dset = read_coco(a)
    # Nothing to fix in our own boxes (six fields need not show every white-cell type).
    assert set(dset.report.counts) <= {"label(s) with no box"}
    for im in dset.images:
        assert (im.boxes >= 0).all() and (im.boxes[:, 2] <= 128).all() and (im.boxes[:, 3] <= 128).all()
        white = [label for label in im.labels if label in WHITE_TYPES]
        assert 1 <= len(white) <= 3 and im.labels.count("rbc") >= 10


# --------------------------------------------------------------------------- a detector run
# (the detector_run fixture and SMALL are in conftest.py: the cascade tests use them too)


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
    from bench.detection.data import Boxes
    from bench.detection.metrics import choose_thresholds, count_error

    images = [Boxes("a", 10, 10, np.zeros((2, 4)), ["wbc", "rbc"]), Boxes("b", 10, 10, np.zeros((1, 4)), ["rbc"])]
    preds = [{"labels": np.array([2, 2, 1]), "scores": np.array([0.9, 0.4, 0.3])},
             {"labels": np.array([1]), "scores": np.array([0.2])}]
    assert choose_thresholds(images, preds, ["rbc", "wbc"]) == {"rbc": 0.05, "wbc": 0.45}
    assert count_error(images, preds, ["rbc", "wbc"], {"rbc": 0.05, "wbc": 0.45})["mean"] == 0.0
    # one threshold for both (0.25): rbc loses image b's box, wbc keeps the false one -> (1 + 1) / 4
    assert count_error(images, preds, ["rbc", "wbc"], 0.25)["mean"] == 0.5


def test_a_detector_run_is_a_leaderboard_row_ranked_by_val_map(detector_run):
    from bench.results import leaderboard as lb
    from bench.results import ranking

    _, rd = detector_run
    board = lb.build_leaderboard(rd.root.parents[2])
    row = board.iloc[0]
    metrics = runs.read_json(rd.metrics)
    assert row["kind"] == "detector" and row["rank"] == 1
    assert row["val_map"] == pytest.approx(metrics["val"]["map"], abs=1e-6)
    assert row["test_count_error"] == pytest.approx(metrics["test"]["count_error"], abs=1e-6)
    assert ranking.rank_key(board) == "val_map"


def test_a_detector_resumes_to_the_same_weights(tmp_path, cache_dir, monkeypatch):
    import torch

    from bench.training import detector as det_fit
    from bench.training import run_training

    whole = run_training(compose_cfg(*SMALL, f"paths.results_dir={tmp_path / 'a'}", f"paths.cache_dir={cache_dir}"))
    real, calls = det_fit._train_epoch, []

    def cut(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(det_fit, "_train_epoch", cut)
    cfg = compose_cfg(*SMALL, f"paths.results_dir={tmp_path / 'b'}", f"paths.cache_dir={cache_dir}")
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg)
    monkeypatch.setattr(det_fit, "_train_epoch", real)
    resumed = run_training(cfg)
    a = torch.load(Path(whole["run_dir"]) / "last.pt", weights_only=True)["model"]
    b = torch.load(Path(resumed["run_dir"]) / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert runs.read_json(Path(resumed["run_dir"]) / "metrics.json")["test"] == runs.read_json(
        Path(whole["run_dir"]) / "metrics.json")["test"]


def test_a_classifier_on_detection_data_is_a_preflight_problem(tmp_path):
    from bench.preflight import plan_runs, preflight

    report = preflight(plan_runs(["data=synthetic_smear", "model=resnet18", "model.pretrained=false",
                                  f"paths.results_dir={tmp_path}"]))
    assert any("resnet18 is a classification model" in p for p in report.problems), report.format()


def test_the_report_has_a_detection_section(detector_run, tmp_path):
    from bench import report

    _, rd = detector_run
    path = report.build_report(rd.root.parents[2], tmp_path / "report")
    text = path.read_text()
    metrics = runs.read_json(rd.metrics)
    section = text.split("## Detection")[1].split("## Failed")[0]
    assert f"{metrics['test']['map']:.3f}" in section and f"{metrics['test']['count_error']:.3f}" in section
    for name in ("detection_pr_curves.png", "detection_fields.png"):
        assert (tmp_path / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and name in text
    assert "No classifier runs here" in text


def test_scale_jitter_moves_boxes_with_the_pixels():
    """data.scale_jitter: after the zoom (and flips), every white pixel is inside a kept box and
    every kept box is mostly white: checked on the image, not with the transform's own box math."""
    import torch
    from torchvision import tv_tensors

    from bench.detection.fields import box_augment

    img = torch.zeros(3, 100, 100, dtype=torch.uint8)
    img[:, 20:40, 50:70] = 255
    img[:, 80:95, 5:20] = 255
    boxes = torch.tensor([[50.0, 20, 70, 40], [5, 80, 20, 95]])
    transform = box_augment([0.6, 1.6])
    zooms = set()
    for seed in range(12):
        torch.manual_seed(seed)
        image, out, labels = transform(tv_tensors.Image(img), tv_tensors.BoundingBoxes(
            boxes, format="XYXY", canvas_size=(100, 100)), torch.tensor([1, 2]))
        white = image[0] > 200
        inside = torch.zeros_like(white)
        for x0, y0, x1, y1 in out.tolist():
            inside[max(0, int(y0 - 1.5)):int(y1 + 1.5) + 1, max(0, int(x0 - 1.5)):int(x1 + 1.5) + 1] = True
            box = image[0, int(round(y0)):int(round(y1)), int(round(x0)):int(round(x1))]
            assert (box > 128).float().mean() > 0.6, (seed, out.tolist())
        assert not (white & ~inside).any(), seed
        assert len(labels) == len(out)
        zooms.add(round(float((out[:, 2] - out[:, 0]).max()), 1))
    assert len(zooms) > 3  # the boxes really change size


def _voc_from_coco(coco_root: Path, voc: Path) -> Path:
    """The synthetic smear fields as a Pascal VOC folder (Annotations/*.xml, JPEGImages/)."""
    data = json.loads((coco_root / "instances.json").read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    (voc / "Annotations").mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    for im in data["images"]:
        Image.open(coco_root / "images" / im["file_name"]).save(voc / "JPEGImages" / im["file_name"])
        objects = "".join(
            f"<object><name>{names[a['category_id']]}</name><bndbox><xmin>{a['bbox'][0]}</xmin>"
            f"<ymin>{a['bbox'][1]}</ymin><xmax>{a['bbox'][0] + a['bbox'][2]}</xmax>"
            f"<ymax>{a['bbox'][1] + a['bbox'][3]}</ymax></bndbox></object>"
            for a in data["annotations"] if a["image_id"] == im["id"])
        (voc / "Annotations" / f"{Path(im['file_name']).stem}.xml").write_text(
            f"<annotation><filename>{im['file_name']}</filename>{objects}</annotation>")
    return voc


def test_a_sweep_over_detector_families_on_a_voc_folder(tmp_path, cache_dir, capsys):
    """bench-train -m data=voc model=a,b: one row per detector. The two families take different
    constructor options (the quickstart's Faster R-CNN proposal counts are its own), and an option a
    detector does not take is a preflight problem before anything trains."""
    from bench.detection.synthetic import synthetic_smear_root
    from bench.cli.train import cli

    voc = _voc_from_coco(synthetic_smear_root(cache_dir, n_fields=12, size=96, seed=5), tmp_path / "voc")
    args = [*SMALL, "data=voc", f"data.root={voc}", "trainer.epochs=1", "trainer.max_batches=1",
            f"paths.results_dir={tmp_path / 'results'}", f"paths.cache_dir={cache_dir}", "experiment_name=vocsweep"]
    models = "model=fasterrcnn_mobilenet_v3_large_320_fpn,ssdlite320_mobilenet_v3_large"
    assert cli([*args, "-m", models]) == 0
    board = pd.read_csv(tmp_path / "results" / "vocsweep" / "leaderboard.csv").set_index("model")
    assert set(board.index) == {"fasterrcnn_mobilenet_v3_large_320_fpn", "ssdlite320_mobilenet_v3_large"}
    assert (board["status"] == "completed").all() and (board["kind"] == "detector").all()
    assert sorted(board["rank"]) == [1, 2]
    capsys.readouterr()
    assert cli([*args, "-m", models, "+model.detector_kwargs.rpn_batch_size_per_image=64"]) == 2
    err = capsys.readouterr().err
    assert "ssdlite320_mobilenet_v3_large: model.detector_kwargs rpn_batch_size_per_image" in err
    assert "fasterrcnn_mobilenet_v3_large_320_fpn:" not in err  # Faster R-CNN takes it


def test_the_detectors_best_epoch_is_the_first_best_validation_map(tmp_path, cache_dir, monkeypatch):
    """Scripted validation mAP 0.2, 0.5, 0.5: the best epoch is 2 (a tie keeps the earlier) and best.pt
    holds epoch 2's weights, not the last epoch's."""
    import torch

    from bench.training import detector as det_fit
    from bench.training import run_training

    real, scripted, saved = det_fit.coco_metrics, iter([0.2, 0.5, 0.5]), {}
    real_epoch = det_fit.DetectorSession.epoch

    def scripted_metrics(gt, res, max_detections):
        out = real(gt, res, max_detections)
        value = next(scripted, None)  # the three epochs' validation, then the real final evaluation
        return out if value is None else {**out, "map": value}

    def remember(s, epoch, progress):
        out = real_epoch(s, epoch, progress)
        saved[epoch + 1] = {k: v.detach().clone() for k, v in s.model.state_dict().items()}
        return out

    monkeypatch.setattr(det_fit, "coco_metrics", scripted_metrics)
    monkeypatch.setattr(det_fit.DetectorSession, "epoch", remember)
    out = run_training(compose_cfg(*SMALL, "trainer.epochs=3", f"paths.results_dir={tmp_path}",
                                   f"paths.cache_dir={cache_dir}"))
    assert out["status"] == "completed", out.get("error")
    run_dir = Path(out["run_dir"])
    metrics = runs.read_json(run_dir / "metrics.json")
    assert metrics["best_epoch"] == 2
    best = torch.load(run_dir / "best.pt", weights_only=True)
    assert best["epoch"] == 2 and all(torch.equal(best["model"][k], saved[2][k]) for k in saved[2])
    assert not all(torch.equal(saved[2][k], saved[3][k]) for k in saved[2])  # epoch 3 did change the weights


def test_score_thresholds_are_chosen_on_validation_never_on_test(tmp_path, monkeypatch):
    """One wbc per field. Validation scores 0.9 and 0.3: counted right from 0.35 up (the lowest such grid
    value, 0.05 steps); test scores 0.9 and 0.8 would ask for 0.85. The run must take 0.35 and then count
    test's two boxes against its one cell."""
    import torch
    from omegaconf import OmegaConf

    from bench.training import detector as det_fit
    from bench.detection.data import Boxes

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
