"""What the preflight says about the data before anything trains: class counts, small and empty
classes, a label typo in box annotations, the official VOC split."""

from __future__ import annotations


import pytest


from tests.helpers import colour_folders, compose_cfg, small_detector_cfg, write_voc

pytestmark = pytest.mark.own_data


def test_a_one_off_label_typo_is_named_with_its_files_and_the_label_map_fix(tmp_path, cache_dir):
    from bench.preflight import plan_runs, preflight
    from bench.training import run_training

    labels = ["WBC"] * 11 + ["wbc"]
    voc = write_voc(tmp_path / "voc", 12, labels=labels)
    args = [f"data.root={voc}", "data=voc", f"paths.results_dir={tmp_path / 'results'}"]
    report = preflight(plan_runs(["experiment=detect_quickstart", *args]))
    problem = " ".join(report.problems)
    assert "'wbc': 1 box(es) on 1 field(s) (JPEGImages/f11.png), like 'WBC'" in problem, report.format()
    assert "'++data.label_map={wbc: WBC}'" in problem
    # The advised option composes (before, it was quoted inside the value and failed to merge) and is applied.
    fixed = compose_cfg("experiment=detect_quickstart", *args, "++data.label_map={wbc: WBC}")
    assert fixed.data.label_map["wbc"] == "WBC" and fixed.data.label_map["lymphocyte"] == "wbc"
    assert compose_cfg(*args, "data.label_map={wbc: WBC}").data.label_map == {"wbc": "WBC"}
    out = run_training(small_detector_cfg(tmp_path, cache_dir, *args[:2]))
    assert out["status"] == "failed" and "data.label_map" in out["error"] and "remove the folder" not in out["error"]


def test_the_preflight_says_the_official_voc_split_as_a_note_not_a_warning(tmp_path):
    from bench.preflight import plan_runs, preflight

    voc = write_voc(tmp_path / "voc", 9, {"train": [0, 1, 2, 3, 4], "val": [5, 6], "test": [7, 8]})
    report = preflight(plan_runs(["experiment=detect_quickstart", "data=voc", f"data.root={voc}",
                                  f"paths.results_dir={tmp_path / 'results'}"]))
    assert any("official split of ImageSets/Main (9 images)" in n for n in report.notes), report.format()
    assert not any("official split" in w for w in report.warnings)


# --------------------------------------------------------------------------- the preflight on a new folder
def test_preflight_prints_class_counts_and_names_small_and_empty_classes(tmp_path):
    from bench.preflight import plan_runs, preflight

    root = colour_folders(tmp_path / "lab", {"basophil": 4, "eosinophil": 2, "neutrophil": 40})
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not an image")
    plan = plan_runs(["data=imagefolder", f"data.root={root}", "model=simple_cnn", "model.pretrained=false",
                      f"paths.results_dir={tmp_path / 'results'}"])
    report = preflight(plan)
    text = report.format()
    assert "classes: basophil 4, eosinophil 2, neutrophil 40" in text
    assert any("'basophil' has only 4 images" in w for w in report.warnings)
    assert any("'eosinophil' has 2 image(s)" in p for p in report.problems)  # cannot even be split
    assert any("'notes'" in w for w in report.warnings)
