"""The smear-field chain (detector -> cell classifier -> differential count), end to end: crops,
a perfect detector, counts that add up, one classifier per detector label, Cheuque's two levels, a
crowded field at the detector's cap.

Expected values come from the annotations the tests write or read (instances.json) and from
arithmetic on paper, never from bench.cascade itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bench import runs
from bench.cascade.chain import square_crop
from bench.cli import predict as predict_cli
from bench.training import run_training as train

from tests.helpers import SMOKE_OVERRIDES, chain_argv, compose_cfg


WHITE = ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil")


# --------------------------------------------------------------------------- by hand
@pytest.mark.known_answer
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
    assert predict_cli.main(chain_argv(folder, det_dir.root, [classifier_run.root], out,
                                       "--truth", str(instances))) == 0
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
    assert predict_cli.main(chain_argv(folder, det_dir.root, [classifier_run.root], out, "--score-threshold", "0.05",
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
    assert predict_cli.main(chain_argv(folder, det_dir.root, [f"wbc={classifier_run.root}"], out,
                                       "--score-threshold", "0.05")) == 0
    cells = pd.read_csv(out / "cells.csv")
    assert set(cells.loc[cells["classified"], "detector_label"]) <= {"wbc"}
    assert runs.read_json(out / "summary.json")["classify_labels"] == ["wbc"]


def test_cheuque_two_levels_on_smear_fields(tmp_path, cache_dir):
    """Level 1: a detector with mononuclear / polymorphonuclear labels (experiment=cheuque2022_detector);
    level 2: the two-level experiment's classifier of each group, one per detector label."""
    from bench.config.plans import level_configs
    from bench.training import run_training

    from tests.helpers import SMALL_DETECTOR

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


# --------------------------------------------------------------------------- the cap and the legend
class CrowdedDetector(torch.nn.Module):
    """Returns ``n`` boxes on every field (disjoint 6 x 6 squares, label 2 = rbc): a crowded field."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, images):
        side = images[0].shape[-1]
        boxes = torch.tensor([[6.0 * (k % 12), 6.0 * (k // 12), 6.0 * (k % 12) + 5, 6.0 * (k // 12) + 5]
                              for k in range(self.n)]) * side / 96
        return [{"boxes": boxes, "labels": torch.full((self.n,), 2), "scores": torch.full((self.n,), 0.9)}
                for _ in images]


@pytest.mark.own_data
def test_a_field_at_the_detectors_cap_is_named_and_the_cap_is_shown(fresh, detector_run, classifier_run, tmp_path,
                                                                    monkeypatch):
    from bench.cascade import run as cli

    folder, _ = fresh
    _, det = detector_run
    real = cli.load_detector

    def crowded(*args, **kwargs):
        loaded = real(*args, **kwargs)
        assert loaded.max_detections == 300 and loaded.model.roi_heads.detections_per_img == 300
        loaded.max_detections, loaded.model = 40, CrowdedDetector(40)
        return loaded

    monkeypatch.setattr(cli, "load_detector", crowded)
    out = tmp_path / "out"
    assert predict_cli.main(chain_argv(folder, det.root, [classifier_run.root], out, "--score-threshold", "0.5")) == 0
    summary = runs.read_json(out / "summary.json")
    assert summary["detector"]["max_detections"] == 40
    assert sorted(summary["fields_at_cap"]) == sorted(p.name for p in folder.iterdir())
    assert any("reached the detector's cap of 40" in w for w in summary["warnings"])
    assert "at most 40 boxes per field" in (out / "summary.md").read_text()
