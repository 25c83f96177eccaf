"""The smear chain's inputs attacked as a new user would (issue 25): a model given as the other kind,
truth that cannot be scored at the level asked, an output folder that already holds something,
fields the detector trained on, a crowded field at the detector's cap, the pictures' legend.
Each mistake is named before the first field is read; nothing is half-written."""

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
from bench.cli import predict as predict_cli


def _argv(folder, detector, classifier_run, out, *extra) -> list[str]:
    return [str(folder), "--detector", str(detector), "--classifier", str(classifier_run), "--out", str(out),
            "--device", "cpu", "--quiet", "--batch-size", "8", *extra]


@pytest.fixture
def fresh(tmp_path):
    """Six fields the detector never saw (seed 11) and their COCO truth (labels rbc, platelet and the
    seven white-cell types)."""
    from bench.cli.smear_fields import main as draw_fields

    root = tmp_path / "fresh"
    assert draw_fields([str(root), "--n", "6", "--size", "96", "--seed", "11"]) == 0
    return root / "images", root / "instances.json"


@pytest.fixture
def no_chain(monkeypatch):
    """Fails the test if any field is processed: the checks must come first."""
    from bench.cascade import run as cli

    def refuse(*args, **kwargs):
        raise AssertionError("the chain ran although its input was wrong")

    monkeypatch.setattr(cli, "run_chain", refuse)


# --------------------------------------------------------------------------- the models
def test_a_detector_given_as_classifier_is_named_at_start(fresh, detector_run, tmp_path, capsys, no_chain):
    folder, _ = fresh
    _, det = detector_run
    assert predict_cli.main(_argv(folder, det.root, det.root, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "is a detector's best.pt" in err and "--detector" in err
    assert predict_cli.main([str(folder), "-c", str(det.best_ckpt), "--out", str(tmp_path / "o2"), "--quiet"]) == 2
    assert "is a detector's best.pt" in capsys.readouterr().err


# --------------------------------------------------------------------------- the truth
def _renamed_truth(instances: Path, dest: Path, rename) -> Path:
    coco = json.loads(instances.read_text())
    for c in coco["categories"]:
        c["name"] = rename(c["name"])
    dest.write_text(json.dumps(coco))
    return dest


def test_truth_without_white_cell_types_stops_before_the_first_field_with_the_fitting_options(
        fresh, detector_run, classifier_run, tmp_path, capsys, no_chain):
    folder, instances = fresh
    _, det = detector_run
    # Another lab's truth: RBC / WBC / PLT, no white-cell types
    truth = _renamed_truth(instances, tmp_path / "lab.json",
                           lambda n: {"rbc": "RBC", "platelet": "PLT"}.get(n, "WBC"))
    assert predict_cli.main(_argv(folder, det.root, classifier_run.root, tmp_path / "out", "--truth", str(truth))) == 2
    err = capsys.readouterr().err
    assert "--score-level detector" in err and "--truth-map" in err and "RBC=rbc" in err and "WBC=wbc" in err
    assert not (tmp_path / "out").exists()


def test_a_truth_map_key_not_in_the_truth_is_named(fresh, detector_run, classifier_run, tmp_path, capsys, no_chain):
    folder, instances = fresh
    _, det = detector_run
    assert predict_cli.main(_argv(folder, det.root, classifier_run.root, tmp_path / "out", "--truth", str(instances),
                              "--truth-map", "Neutrophil=neutrophil,rbc=rbc")) == 2
    err = capsys.readouterr().err
    assert "--truth-map" in err and "'Neutrophil'" in err and "not a label of the truth" in err


# --------------------------------------------------------------------------- the output folder
def test_a_non_empty_out_that_is_no_chain_output_is_refused(fresh, detector_run, classifier_run, tmp_path, capsys,
                                                            no_chain):
    folder, _ = fresh
    _, det = detector_run
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    assert predict_cli.main(_argv(folder, det.root, classifier_run.root, out)) == 2
    assert "not the output of a chain run" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_rerun_with_fewer_fields_replaces_the_previous_output_whole(fresh, detector_run, classifier_run, tmp_path,
                                                                     capsys):
    from bench.cli.report import main as report_main

    folder, _ = fresh
    _, det = detector_run
    out = tmp_path / "out"
    assert predict_cli.main(_argv(folder, det.root, classifier_run.root, out, "--score-threshold", "0.05")) == 0
    assert report_main([str(out)]) == 0 and (out / "report" / "report.md").is_file()
    for name in sorted(p.name for p in folder.iterdir())[3:]:
        (folder / name).unlink()
    capsys.readouterr()
    assert predict_cli.main(_argv(folder, det.root, classifier_run.root, out, "--score-threshold", "0.05")) == 0
    assert "replaced the previous chain output" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "fields").iterdir()) == sorted(p.name for p in folder.iterdir())
    assert not (out / "report").exists()  # the old report described fields that are gone
    assert runs.read_json(out / "summary.json")["n_fields"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary folder left


# --------------------------------------------------------------------------- fields the detector saw
def test_fields_the_detector_trained_on_are_refused_or_labelled(detector_run, classifier_run, tmp_path, capsys):
    cfg, det = detector_run
    root = next(Path(cfg.paths.cache_dir, "datasets").glob("synthetic-smear-n16-s96-*"))
    folder = tmp_path / "seen"
    shutil.copytree(root / "images", folder)  # copied and renamed: recognised by their bytes
    (folder / "field-0000.png").rename(folder / "renamed.png")
    manifest = pd.read_csv(det.root.parents[2] / "manifest.csv")
    seen = set(manifest.loc[manifest["split"] != "test", "path"].str.replace("images/", "", regex=False))
    assert predict_cli.main(_argv(folder, det.root, classifier_run.root, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert f"{len(seen)} of the 16 fields" in err and "--allow-seen-fields" in err
    out = tmp_path / "labelled"
    assert predict_cli.main(_argv(folder, det.root, classifier_run.root, out, "--allow-seen-fields",
                              "--truth", str(root / "instances.json"), "--score-threshold", "0.05")) == 0
    summary = runs.read_json(out / "summary.json")
    named = {("field-0000.png" if f == "renamed.png" else f) for f in summary["seen_fields"]}
    assert named == seen
    assert "seen by the detector" in (out / "summary.md").read_text().splitlines()[0]
    counts = pd.read_csv(out / "counts.csv")
    assert set(counts.loc[counts["seen_by_detector"], "field"]) - {"(all fields)"} == set(summary["seen_fields"])
    metrics = json.loads((out / "cascade_metrics.json").read_text())
    assert sorted(metrics["seen_fields"]) == sorted(summary["seen_fields"]) and metrics["warnings"]


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
    assert predict_cli.main(_argv(folder, det.root, classifier_run.root, out, "--score-threshold", "0.5")) == 0
    summary = runs.read_json(out / "summary.json")
    assert summary["detector"]["max_detections"] == 40
    assert sorted(summary["fields_at_cap"]) == sorted(p.name for p in folder.iterdir())
    assert any("reached the detector's cap of 40" in w for w in summary["warnings"])
    assert "at most 40 boxes per field" in (out / "summary.md").read_text()


def test_field_pictures_carry_a_legend(fresh, detector_run, classifier_run, tmp_path):
    """Below the field: a strip with a swatch per class in its colour, the truth's missed cells in white and
    what '?' means; the field itself is drawn above it, unchanged in size."""
    folder, instances = fresh
    _, det = detector_run
    out = tmp_path / "out"
    assert predict_cli.main(_argv(folder, det.root, classifier_run.root, out, "--score-threshold", "0.05",
                              "--score-level", "detector", "--truth", str(instances),
                              "--truth-map", ",".join(f"{c}=wbc" for c in ("basophil", "eosinophil", "erythroblast",
                                                                            "ig", "lymphocyte", "monocyte",
                                                                            "neutrophil")))) == 0
    picture = Image.open(out / "fields" / "field-0000.png").convert("RGB")
    assert picture.size[0] == 512 and picture.size[1] > 512  # the 96 px field enlarged to 512, the legend below
    from bench.cascade.draw import legend_entries, picture_colours

    strip = np.asarray(picture)[512:]
    summary = runs.read_json(out / "summary.json")
    entries = legend_entries(picture_colours(summary["classes"], summary["detector"]["labels"]), truth=True,
                             typed=summary["classes"])
    texts = [text for text, _ in entries]
    assert any("missed" in t for t in texts) and any("'?'" in t and "low confidence" in t for t in texts)
    assert {t.split(":")[0] for t in texts} >= set(summary["classes"]) | set(summary["detector"]["labels"])
    for text, colour in entries:
        if colour is not None:
            assert (strip.reshape(-1, 3) == colour).all(axis=1).any(), text  # every swatch is drawn


# --------------------------------------------------------------------------- crowd regions in the truth
def test_cells_found_in_a_crowd_region_of_the_truth_are_ignored_not_spurious():
    """COCO's rule for iscrowd boxes, in the chain's scoring too: a predicted cell matched to no true cell
    but lying (by at least half its area) in a crowd region is left out, not counted spurious."""
    from bench.cascade import scoring
    from bench.detection.data import AnnotationReport, Boxes, DetectionSet

    truth = DetectionSet(Path("."), [Boxes("f.png", 100, 100, np.array([[0, 0, 10, 10]], np.float32), ["rbc"],
                                           ignore=np.array([[50, 50, 90, 90]], np.float32), ignore_labels=["rbc"])],
                         ["rbc"], AnnotationReport())
    cells = pd.DataFrame([("f.png", 0, 0, 10, 10, "rbc", False, "rbc"),  # the true cell
                          ("f.png", 60, 60, 70, 70, "rbc", False, "rbc"),  # inside the crowd: ignored
                          ("f.png", 85, 20, 95, 30, "rbc", False, "rbc")],  # elsewhere: spurious
                         columns=["field", "xmin", "ymin", "xmax", "ymax", "detector_label", "classified", "cell_type"])
    m = scoring.score_cells(cells, ["f.png"], truth, level="detector")
    assert m["overall"]["spurious"] == 1 and m["overall"]["n_pred"] == 2
    assert m["overall"]["ignored_in_crowd_regions"] == 1
    assert m["per_class"]["rbc"]["precision"] == 0.5
