"""What the chain checks before the first field is read (bench.cascade.run, guards): a model given
as the other kind, truth that cannot be scored at the level asked, an output folder that already
holds something, fields the detector trained on, bad input in one clear message. Nothing is
half-written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench import runs
from bench.cli import predict as predict_cli

from tests.helpers import chain_argv


@pytest.fixture
def no_chain(monkeypatch):
    """Fails the test if any field is processed: the checks must come first."""
    from bench.cascade import run as cli

    def refuse(*args, **kwargs):
        raise AssertionError("the chain ran although its input was wrong")

    monkeypatch.setattr(cli, "run_chain", refuse)


# --------------------------------------------------------------------------- the models
@pytest.mark.own_data
def test_a_detector_given_as_classifier_is_named_at_start(fresh, detector_run, tmp_path, capsys, no_chain):
    folder, _ = fresh
    _, det = detector_run
    assert predict_cli.main(chain_argv(folder, det.root, [det.root], tmp_path / "out")) == 2
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


@pytest.mark.own_data
def test_truth_without_white_cell_types_stops_before_the_first_field_with_the_fitting_options(
        fresh, detector_run, classifier_run, tmp_path, capsys, no_chain):
    folder, instances = fresh
    _, det = detector_run
    # Another lab's truth: RBC / WBC / PLT, no white-cell types
    truth = _renamed_truth(instances, tmp_path / "lab.json",
                           lambda n: {"rbc": "RBC", "platelet": "PLT"}.get(n, "WBC"))
    assert predict_cli.main(chain_argv(folder, det.root, [classifier_run.root], tmp_path / "out",
                                       "--truth", str(truth))) == 2
    err = capsys.readouterr().err
    assert "--score-level detector" in err and "--truth-map" in err and "RBC=rbc" in err and "WBC=wbc" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.own_data
def test_a_truth_map_key_not_in_the_truth_is_named(fresh, detector_run, classifier_run, tmp_path, capsys, no_chain):
    folder, instances = fresh
    _, det = detector_run
    assert predict_cli.main(chain_argv(folder, det.root, [classifier_run.root], tmp_path / "out",
                                       "--truth", str(instances), "--truth-map", "Neutrophil=neutrophil,rbc=rbc")) == 2
    err = capsys.readouterr().err
    assert "--truth-map" in err and "'Neutrophil'" in err and "not a label of the truth" in err


# --------------------------------------------------------------------------- the output folder
@pytest.mark.own_data
def test_a_non_empty_out_that_is_no_chain_output_is_refused(fresh, detector_run, classifier_run, tmp_path, capsys,
                                                            no_chain):
    folder, _ = fresh
    _, det = detector_run
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    assert predict_cli.main(chain_argv(folder, det.root, [classifier_run.root], out)) == 2
    assert "not the output of a chain run" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


@pytest.mark.own_data
def test_a_rerun_with_fewer_fields_replaces_the_previous_output_whole(fresh, detector_run, classifier_run, tmp_path,
                                                                     capsys):
    from bench.cli.report import main as report_main

    folder, _ = fresh
    _, det = detector_run
    out = tmp_path / "out"
    assert predict_cli.main(chain_argv(folder, det.root, [classifier_run.root], out, "--score-threshold", "0.05")) == 0
    assert report_main([str(out)]) == 0 and (out / "report" / "report.md").is_file()
    for name in sorted(p.name for p in folder.iterdir())[3:]:
        (folder / name).unlink()
    capsys.readouterr()
    assert predict_cli.main(chain_argv(folder, det.root, [classifier_run.root], out, "--score-threshold", "0.05")) == 0
    assert "replaced the previous chain output" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "fields").iterdir()) == sorted(p.name for p in folder.iterdir())
    assert not (out / "report").exists()  # the old report described fields that are gone
    assert runs.read_json(out / "summary.json")["n_fields"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary folder left


# --------------------------------------------------------------------------- fields the detector saw
@pytest.mark.own_data
def test_fields_the_detector_trained_on_are_refused_or_labelled(detector_run, classifier_run, tmp_path, capsys):
    cfg, det = detector_run
    root = next(Path(cfg.paths.cache_dir, "datasets").glob("synthetic-smear-n16-s96-*"))
    folder = tmp_path / "seen"
    shutil.copytree(root / "images", folder)  # copied and renamed: recognised by their bytes
    (folder / "field-0000.png").rename(folder / "renamed.png")
    manifest = pd.read_csv(det.root.parents[2] / "manifest.csv")
    seen = set(manifest.loc[manifest["split"] != "test", "path"].str.replace("images/", "", regex=False))
    assert predict_cli.main(chain_argv(folder, det.root, [classifier_run.root], tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert f"{len(seen)} of the 16 fields" in err and "--allow-seen-fields" in err
    out = tmp_path / "labelled"
    assert predict_cli.main(chain_argv(folder, det.root, [classifier_run.root], out, "--allow-seen-fields",
                                       "--truth", str(root / "instances.json"), "--score-threshold", "0.05")) == 0
    summary = runs.read_json(out / "summary.json")
    named = {("field-0000.png" if f == "renamed.png" else f) for f in summary["seen_fields"]}
    assert named == seen
    assert "seen by the detector" in (out / "summary.md").read_text().splitlines()[0]
    counts = pd.read_csv(out / "counts.csv")
    assert set(counts.loc[counts["seen_by_detector"], "field"]) - {"(all fields)"} == set(summary["seen_fields"])
    metrics = json.loads((out / "cascade_metrics.json").read_text())
    assert sorted(metrics["seen_fields"]) == sorted(summary["seen_fields"]) and metrics["warnings"]


@pytest.mark.parametrize("extra, message", [
    (["--classify-labels", "neutrophil"], "not labels of the detector"),
    (["--truth", "missing.csv"], "--truth"),
])
def test_bad_chain_input_is_one_clear_message(fields, detector_run, classifier_run, tmp_path, capsys, extra, message):
    folder, _ = fields
    _, det_dir = detector_run
    assert predict_cli.main(chain_argv(folder, det_dir.root, [classifier_run.root], tmp_path / "o", *extra)) == 2
    assert message in capsys.readouterr().err


def test_fields_that_all_fail_to_decode_are_an_error_not_a_zero_count(detector_run, classifier_run, tmp_path, capsys):
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("a.png", "b.jpg"):
        (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    _, det_dir = detector_run
    assert predict_cli.main(chain_argv(folder, det_dir.root, [classifier_run.root], tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert "none of the 2 image file(s)" in err and "a.png" in err
    assert not (tmp_path / "o" / "counts.csv").exists()


def test_a_classifier_as_detector_or_without_one_is_named(fields, classifier_run, tmp_path, capsys):
    folder, _ = fields
    assert predict_cli.main(chain_argv(folder, classifier_run.root, [classifier_run.root], tmp_path / "o")) == 2
    assert "not a detector's best.pt" in capsys.readouterr().err
    assert predict_cli.main([str(folder), "--classifier", str(classifier_run.root), "--out", str(tmp_path / "o")]) == 2
    assert "add --detector" in capsys.readouterr().err
