"""The smear-field chain (detector -> cell classifier -> differential count), end to end and by hand.

Expected values come from the annotations the tests write or read (instances.json) and from
arithmetic on paper, never from bench.cascade itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bench import predict, runs

from bench.predict import checkpoints as predict_checkpoints
from bench.cascade import scoring
from bench.cascade.chain import square_crop
from bench.detection.data import AnnotationReport, Boxes, DetectionSet
from bench.training import run_training as train
from bench.cli import predict as predict_cli

from .conftest import SMOKE_OVERRIDES, compose_cfg

WHITE = ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil")


# --------------------------------------------------------------------------- by hand
def test_square_crop_by_hand():
    # box 20 x 40 at (10, 20): side 40 * 1.5 = 60 centred on (20, 40) -> (-10, 10); shifted inside.
    assert square_crop((10, 20, 30, 60), 100, 100, 0.25) == (0, 10, 60, 70)
    # at the right edge: centre x 95 -> left 65, shifted to 100 - 60 = 40.
    assert square_crop((85, 20, 105, 60), 100, 100, 0.25) == (40, 10, 100, 70)
    # no margin, a square box stays itself; a square larger than the field is cut to it.
    assert square_crop((10, 10, 30, 30), 100, 100, 0.0) == (10, 10, 30, 30)
    assert square_crop((0, 0, 40, 40), 50, 30, 0.5) == (0, 0, 50, 30)
    # a fixed side in field pixels (at least the box): 64 around a 20 px box centred on (50, 50)
    assert square_crop((40, 40, 60, 60), 200, 200, 0.25, crop_size=64) == (18, 18, 82, 82)
    assert square_crop((40, 40, 140, 60), 200, 200, 0.25, crop_size=64) == (40, 0, 140, 100)


def test_matching_maximises_total_iou_not_greedy():
    # true A=(0,0,10,10), B=(6,0,16,10); pred p0=(3,0,13,10) overlaps both (IoU 7/13 each), p1=(0,0,10,10)=A.
    # Greedy by first pred would pair p0-A and leave p1 alone; the best total pairs p1-A, p0-B.
    pairs = scoring.match_boxes(np.array([[3, 0, 13, 10], [0, 0, 10, 10]], float),
                                np.array([[0, 0, 10, 10], [6, 0, 16, 10]], float))
    assert sorted(pairs) == [(0, 1), (1, 0)]
    # IoU below 0.5 is no match: (0,0,10,10) vs (5,0,15,10) = 50/150.
    assert scoring.match_boxes(np.array([[0, 0, 10, 10]], float), np.array([[5, 0, 15, 10]], float)) == []


def _cells(rows):
    frame = pd.DataFrame(rows, columns=["field", "xmin", "ymin", "xmax", "ymax", "detector_label", "classified",
                                        "cell_type"])
    return frame


def test_cascade_scores_by_hand():
    truth = DetectionSet(Path("."), [
        Boxes("f1.png", 100, 100, np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60], [70, 70, 80, 80]],
                                           np.float32), ["neutrophil", "lymphocyte", "rbc", "rbc"]),
        Boxes("f2.png", 100, 100, np.array([[0, 0, 10, 10]], np.float32), ["lymphocyte"]),
    ], ["lymphocyte", "neutrophil", "rbc"], AnnotationReport())
    cells = _cells([
        ("f1.png", 0, 0, 10, 10, "wbc", True, "neutrophil"),      # right
        ("f1.png", 20, 20, 30, 30, "wbc", True, "neutrophil"),    # found, typed wrong (true lymphocyte)
        ("f1.png", 50, 50, 60, 60, "rbc", False, "rbc"),          # right, not typed
        ("f1.png", 90, 90, 99, 99, "wbc", True, "lymphocyte"),    # spurious
        # f1's rbc at 70,70 missed; f2's lymphocyte detected as rbc (found, never typed)
        ("f2.png", 1, 0, 10, 10, "rbc", False, "rbc"),
    ])
    m = scoring.score_cells(cells, ["f1.png", "f2.png"], truth, typed_classes=["lymphocyte", "neutrophil"])
    pc = m["per_class"]
    # neutrophil: 1 true, 2 predicted, 1 right -> sensitivity 1, precision 1/2
    assert pc["neutrophil"]["sensitivity"] == 1.0 and pc["neutrophil"]["precision"] == 0.5
    # lymphocyte: 2 true, 1 predicted (spurious), 0 right
    assert pc["lymphocyte"]["sensitivity"] == 0.0 and pc["lymphocyte"]["precision"] == 0.0
    assert pc["lymphocyte"]["spurious"] == 1 and pc["lymphocyte"]["missed"] == 0
    # rbc: 2 true, 2 predicted (one is f2's lymphocyte), 1 right; f1's second rbc missed
    assert pc["rbc"]["sensitivity"] == 0.5 and pc["rbc"]["precision"] == 0.5 and pc["rbc"]["missed"] == 1
    o = m["overall"]
    assert (o["n_true"], o["n_pred"], o["matched"], o["missed"], o["spurious"], o["correct"]) == (5, 5, 4, 1, 1, 2)
    assert o["accuracy_of_matched"] == 0.5
    # count errors, fields x classes (lymphocyte, neutrophil, rbc): f1 |1-1|,|2-1|,|1-2| ; f2 |0-1|,|0-0|,|1-0|
    assert m["count_error_per_field"]["f1.png"] == {"lymphocyte": 0, "neutrophil": 1, "rbc": 1}
    assert m["count_error_per_field"]["f2.png"] == {"lymphocyte": 1, "neutrophil": 0, "rbc": 1}
    assert o["count_error"] == pytest.approx(4 / 6)
    # finding nothing: the true counts, f1 (1, 1, 2) and f2 (1, 0, 0) -> 5 / 6
    assert o["count_error_finding_nothing"] == pytest.approx(5 / 6)
    assert pc["rbc"]["count_error"] == 1.0
    # stages over the 3 true white cells: f1's two were typed (found), f2's went as rbc (lost at detection);
    # of the 2 found, 1 typed right
    st = m["stages"]
    assert (st["n_true"], st["found"], st["correct"], st["lost_at_detection"], st["lost_at_classification"]) == \
        (3, 2, 1, 1, 1)
    assert st["detector_recall"] == pytest.approx(2 / 3) and st["classifier_accuracy"] == 0.5


def test_truth_without_our_classes_names_the_mapping_options():
    truth = DetectionSet(Path("."), [Boxes("f.png", 10, 10, np.array([[0, 0, 5, 5]], np.float32), ["WBC"])],
                         ["WBC"], AnnotationReport())
    cells = _cells([("f.png", 0, 0, 5, 5, "wbc", True, "neutrophil")])
    with pytest.raises(predict_checkpoints.PredictError, match="--truth-map.*--score-level detector"):
        scoring.score_cells(cells, ["f.png"], truth, typed_classes=["neutrophil", "lymphocyte"])
    m = scoring.score_cells(cells, ["f.png"], DetectionSet(Path("."), [Boxes(
        "f.png", 10, 10, np.array([[0, 0, 5, 5]], np.float32), ["wbc"])], ["wbc"], AnnotationReport()),
        level="detector", typed_classes=["neutrophil"])
    assert m["per_class"]["wbc"]["sensitivity"] == 1.0 and m["stages"] is None


def test_a_detector_checkpoint_with_frozen_batchnorm_rebuilds(tmp_path):
    """Detectors started from COCO / ImageNet weights hold FrozenBatchNorm2d; best.pt rebuilds offline."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    from bench.training.checkpoints import rebuild_model
    from bench.models import create_model

    torch.manual_seed(0)
    model = create_model("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=2, pretrained=False, image_size=64)
    for name, module in list(model.backbone.named_modules()):  # what torchvision does for a pretrained start
        if isinstance(module, torch.nn.BatchNorm2d):
            parent, _, child = name.rpartition(".")
            frozen = FrozenBatchNorm2d(module.num_features)
            frozen.running_mean.uniform_(-0.1, 0.1)
            setattr(model.backbone.get_submodule(parent) if parent else model.backbone, child, frozen)
    model.eval()
    ckpt = {"model": model.state_dict(), "model_name": "fasterrcnn_mobilenet_v3_large_320_fpn",
            "class_names": ["rbc", "wbc"], "input_size": 64, "task": "detection", "pretrained": True}
    rebuilt = rebuild_model(ckpt)
    x = [torch.rand(3, 64, 64)]
    with torch.no_grad():
        a, b = model.backbone.body(x[0][None]), rebuilt.backbone.body(x[0][None])
    assert all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- end to end
@pytest.fixture
def fields(tmp_path):
    """Fresh synthetic fields (a seed the detector never trained or validated on: the chain refuses
    those), a blank field (no cells) and a broken file; the truth json."""
    from bench.cli.smear_fields import main as draw_fields

    root = tmp_path / "fresh"
    assert draw_fields([str(root), "--n", "16", "--size", "96", "--seed", "7"]) == 0
    folder = tmp_path / "fields"
    shutil.copytree(root / "images", folder)
    Image.new("RGB", (96, 96), (230, 220, 200)).save(folder / "empty.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    return folder, root / "instances.json"


def _truth_by_field(instances: Path) -> dict[str, list[tuple[list[float], str]]]:
    coco = json.loads(instances.read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    out: dict[str, list] = {f: [] for f in files.values()}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        out[files[a["image_id"]]].append(([x, y, x + w, y + h], names[a["category_id"]]))
    return out


class OracleDetector(torch.nn.Module):
    """Returns the true boxes of the fields, in the order the chain reads them, scaled to the resized
    input it is given: a perfect detector, so every loss is the classifier's or the plumbing's."""

    def __init__(self, queue, labels, native: int):
        super().__init__()
        self.queue, self.labels, self.native = list(queue), labels, native

    def forward(self, images):
        out = []
        for image in images:
            scale = image.shape[-1] / self.native
            objects = self.queue.pop(0)
            boxes = torch.tensor([b for b, _ in objects], dtype=torch.float32).reshape(-1, 4) * scale
            labels = [self.labels.index("wbc" if lab in WHITE else lab) + 1 for _, lab in objects]
            out.append({"boxes": boxes, "labels": torch.tensor(labels, dtype=torch.int64),
                        "scores": torch.ones(len(objects))})
        return out


def _args(folder, detector, classifiers, out, *extra):
    argv = [str(folder), "--detector", str(detector), "--out", str(out), "--device", "cpu", "--quiet",
            "--batch-size", "8", *extra]
    for c in classifiers:
        argv += ["--classifier", str(c)]
    return argv


def test_the_chain_with_a_perfect_detector_loses_cells_only_at_the_classifier(fields, detector_run, classifier_run,
                                                                              tmp_path, monkeypatch, capsys):
    from bench.cascade import run as cli

    folder, instances = fields
    _, det_dir = detector_run
    truth = _truth_by_field(instances)
    real = cli.load_detector

    def oracle(*a, **k):
        det = real(*a, **k)
        det.input_size = 64  # fields of 96 px go in at 64 px: boxes must come back scaled by 96/64
        det.model = OracleDetector([[]] + [truth[f] for f in sorted(truth)], det.labels, 96)  # empty.png first
        return det

    monkeypatch.setattr(cli, "load_detector", oracle)
    out = tmp_path / "out"
    assert predict_cli.main(_args(folder, det_dir.root, [classifier_run.root], out, "--truth", str(instances))) == 0
    assert "cells found" in capsys.readouterr().out
    cells = pd.read_csv(out / "cells.csv")
    # boxes come back in field pixels, in the truth's order
    expected = [(f, box, lab) for f in sorted(truth) for box, lab in truth[f]]
    assert len(cells) == len(expected)
    np.testing.assert_allclose(cells[["xmin", "ymin", "xmax", "ymax"]].to_numpy(), [b for _, b, _ in expected],
                               atol=0.02)
    # typed: the wbc and platelet boxes (platelet is one of the classifier's classes), not the red cells
    true_labels = [lab for _, _, lab in expected]
    assert cells["classified"].tolist() == [lab != "rbc" for lab in true_labels]
    m = json.loads((out / "cascade_metrics.json").read_text())
    typed_truth = [lab for lab in true_labels if lab != "rbc"]
    right = sum(t == p for t, p, c in zip(true_labels, cells["cell_type"], cells["classified"]) if c)
    assert m["stages"]["n_true"] == m["stages"]["found"] == len(typed_truth)
    assert m["stages"]["correct"] == right
    assert m["overall"]["missed"] == 0 and m["overall"]["spurious"] == 0
    assert m["fields_without_truth"] == ["empty.png"]
    counts = pd.read_csv(out / "counts.csv")
    empty = counts[counts["field"] == "empty.png"]
    assert len(empty) == 3 + 8 and empty["count"].sum() == 0  # a field with no cells: zeros, not a gap
    assert (out / "fields" / "empty.png").is_file()
    # red cells are never typed, so their count error is 0 in every field
    assert all(errors["rbc"] == 0 for errors in m["count_error_per_field"].values())


def test_counts_add_up_to_the_cells_and_every_field_gets_its_picture(fields, detector_run, classifier_run, tmp_path):
    folder, instances = fields
    _, det_dir = detector_run
    out = tmp_path / "out"
    assert predict_cli.main(_args(folder, det_dir.root, [classifier_run.root], out, "--score-threshold", "0.05",
                              "--truth", str(instances))) == 0
    cells, counts = pd.read_csv(out / "cells.csv"), pd.read_csv(out / "counts.csv")
    readable = sorted(p.name for p in folder.glob("*.png") if p.name != "broken.png")
    assert sorted(p.name for p in (out / "fields").iterdir()) == readable
    for p in (out / "fields").iterdir():
        assert Image.open(p).size[0] >= 512  # small fields are enlarged so the tags are legible
    assert pd.read_csv(out / "unreadable.csv")["path"].tolist() == ["broken.png"]
    for field in readable:
        here = counts[counts["field"] == field]
        assert here[here["group"] == "detected"]["count"].sum() == (cells["field"] == field).sum()
        typed = cells[(cells["field"] == field) & cells["classified"]]
        assert here[here["group"] == "typed"]["count"].sum() == len(typed)
        for row in here[here["group"] == "typed"].itertuples():
            assert row.count == (typed["cell_type"] == row.label).sum()
    total = counts[counts["field"] == "(all fields)"]
    assert total[total["group"] == "detected"]["count"].sum() == len(cells)
    typed_total = total[total["group"] == "typed"]
    if len(cells[cells["classified"]]):
        assert typed_total["percent"].sum() == pytest.approx(100.0, abs=0.05)
    assert len(counts[counts["field"] == "empty.png"]) == 3 + 8  # every label, zeros included
    summary = runs.read_json(out / "summary.json")
    assert summary["classify_labels"] == ["platelet", "wbc"] and "default" in summary["classify_labels_rule"]
    assert summary["n_unreadable"] == 1 and (out / "summary.md").read_text().startswith("# Differential count")
    m = json.loads((out / "cascade_metrics.json").read_text())
    n_true = sum(len(v) for v in _truth_by_field(instances).values())
    assert m["overall"]["n_true"] == n_true
    assert m["overall"]["n_pred"] == len(cells) - (cells["field"] == "empty.png").sum()
    # bench-report on the folder scores it again from cells.csv and the recorded truth
    from bench.cli.report import main as report_main

    assert report_main([str(out)]) == 0
    assert json.loads((out / "report" / "cascade_metrics.json").read_text()) == m
    text = (out / "report" / "report.md").read_text()
    assert "![field-0000.png](../fields/field-0000.png)" in text and "## Against the ground truth" in text


def test_one_classifier_per_detector_label(fields, detector_run, classifier_run, tmp_path):
    folder, _ = fields
    _, det_dir = detector_run
    out = tmp_path / "out"
    assert predict_cli.main(_args(folder, det_dir.root, [f"wbc={classifier_run.root}"], out, "--score-threshold",
                              "0.05")) == 0
    cells = pd.read_csv(out / "cells.csv")
    assert set(cells.loc[cells["classified"], "detector_label"]) <= {"wbc"}
    assert runs.read_json(out / "summary.json")["classify_labels"] == ["wbc"]


@pytest.mark.parametrize("extra, message", [
    (["--classify-labels", "neutrophil"], "not labels of the detector"),
    (["--truth", "missing.csv"], "--truth"),
])
def test_bad_chain_input_is_one_clear_message(fields, detector_run, classifier_run, tmp_path, capsys, extra, message):
    folder, _ = fields
    _, det_dir = detector_run
    assert predict_cli.main(_args(folder, det_dir.root, [classifier_run.root], tmp_path / "o", *extra)) == 2
    assert message in capsys.readouterr().err


def test_fields_that_all_fail_to_decode_are_an_error_not_a_zero_count(detector_run, classifier_run, tmp_path, capsys):
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("a.png", "b.jpg"):
        (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    _, det_dir = detector_run
    assert predict_cli.main(_args(folder, det_dir.root, [classifier_run.root], tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert "none of the 2 image file(s)" in err and "a.png" in err
    assert not (tmp_path / "o" / "counts.csv").exists()


def test_a_classifier_as_detector_or_without_one_is_named(fields, classifier_run, tmp_path, capsys):
    folder, _ = fields
    assert predict_cli.main(_args(folder, classifier_run.root, [classifier_run.root], tmp_path / "o")) == 2
    assert "not a detector's best.pt" in capsys.readouterr().err
    assert predict_cli.main([str(folder), "--classifier", str(classifier_run.root), "--out", str(tmp_path / "o")]) == 2
    assert "add --detector" in capsys.readouterr().err


def test_cheuque_two_levels_on_smear_fields(tmp_path, cache_dir):
    """Level 1: a detector with mononuclear / polymorphonuclear labels (experiment=cheuque2022_detector);
    level 2: the two-level experiment's classifier of each group, one per detector label."""
    from bench.config.plans import level_configs
    from bench.training import run_training

    from .conftest import SMALL_DETECTOR

    common = [f"paths.results_dir={tmp_path / 'results'}", f"paths.cache_dir={cache_dir}"]
    det = run_training(compose_cfg(*SMALL_DETECTOR, "experiment=cheuque2022_detector", *common))
    assert det["status"] == "completed", det.get("error")
    assert torch.load(Path(det["run_dir"]) / "best.pt", weights_only=True)["class_names"] == [
        "mononuclear", "other_wbc", "platelet", "polymorphonuclear", "rbc"]
    # A detector run records how it departs from its recipe (issue 24): the declared departure and
    # the small test's overrides, named against the experiment's values.
    recorded = runs.read_json(Path(det["run_dir"]) / "metrics.json")["protocol_deviations"]
    assert recorded[0].startswith("MobileNetV3-Large 320 Faster R-CNN from scratch")
    assert "trainer.epochs=2 (paper: 12)" in recorded and "data.image_size=96 (paper: 256)" in recorded
    cfg = compose_cfg(*SMOKE_OVERRIDES, "experiment=cheuque2022_two_level", "data=synthetic", "trainer.epochs=1",
                      "trainer.max_batches=1", "data.image_size=32", *common)
    _, level2 = level_configs(cfg)
    groups = {g: Path(train(c)["run_dir"]) for g, c in level2.items()}
    root = next(Path(cache_dir, "datasets").glob("synthetic-smear-n16-s96-*"))
    out = tmp_path / "chain"
    argv = [str(root / "images"), "--detector", det["run_dir"], "--out", str(out), "--device", "cpu", "--quiet",
            "--score-threshold", "0.05", "--truth", str(root / "instances.json"),
            "--allow-seen-fields"]  # the detector's own fields: this checks the routing, not the numbers
    for g, run_dir in groups.items():
        argv += ["--classifier", f"{g}={run_dir}"]
    assert predict_cli.main(argv) == 0
    cells = pd.read_csv(out / "cells.csv")
    typed = cells[cells["classified"]]
    assert set(typed["detector_label"]) <= {"mononuclear", "polymorphonuclear"}
    mn = typed[typed["detector_label"] == "mononuclear"]["cell_type"]
    pmn = typed[typed["detector_label"] == "polymorphonuclear"]["cell_type"]
    assert set(mn) <= {"lymphocyte", "monocyte"} and set(pmn) <= {"eosinophil", "neutrophil"}
    assert (cells.loc[~cells["classified"], "cell_type"] == cells.loc[~cells["classified"], "detector_label"]).all()
    m = json.loads((out / "cascade_metrics.json").read_text())
    assert m["stages"]["n_true"] == sum(1 for v in _truth_by_field(root / "instances.json").values()
                                        for _, lab in v if lab in ("lymphocyte", "monocyte", "eosinophil",
                                                                   "neutrophil"))


def test_crops_enlarged_far_beyond_the_classifier_scale_are_warned():
    from bench.cascade.run import scale_warnings

    assert scale_warnings([1.0, 0.5, 1.8]) == [] and scale_warnings([]) == []
    (warning,) = scale_warnings([2.5, 3.0, 3.5])
    assert "enlarged 3.0 times" in warning and "magnification" in warning
