"""bench-predict on a folder the test writes, with the checkpoint of the session's tiny training run
(conftest's classifier_run; the test that writes an ensemble into its folder takes its own copy)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bench import runs
from bench.cli import ensemble as ensemble_cli, predict as predict_cli


@pytest.fixture
def images(tmp_path, classifier_run):
    """A folder with 5 real cell images (one nested), a broken PNG, a text file and a hidden file."""
    run_dir = classifier_run
    data_root = Path(runs.read_json(run_dir.metrics)["data_root"])
    sources = sorted(data_root.rglob("*.png"))[::37][:5]
    folder = tmp_path / "new_cells"
    (folder / "slide2").mkdir(parents=True)
    for i, src in enumerate(sources):
        dest = folder / ("slide2" if i == 0 else "") / f"cell{i}.png"
        shutil.copy(src, dest)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (folder / "notes.txt").write_text("not an image")
    Image.new("RGB", (8, 8)).save(folder / ".hidden.png")
    return folder


def _classes(run_dir) -> list[str]:
    return torch.load(run_dir.best_ckpt, map_location="cpu", weights_only=True)["class_names"]


def test_single_checkpoint(classifier_run, images, tmp_path, capsys):
    run_dir = classifier_run
    out = tmp_path / "out"
    assert predict_cli.main([str(images), "--checkpoint", str(run_dir.best_ckpt), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "5 image(s) classified" in printed and "broken.png" in printed
    classes = _classes(run_dir)
    preds = pd.read_csv(out / "predictions.csv")
    assert list(preds.columns) == ["path", "predicted", "confidence", "low_confidence",
                                   *(f"prob_{c}" for c in classes)]
    assert sorted(preds["path"]) == sorted(["slide2/cell0.png", *(f"cell{i}.png" for i in range(1, 5))])
    assert set(preds["predicted"]) <= set(classes)
    probs = preds[[f"prob_{c}" for c in classes]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(preds["confidence"], probs.max(axis=1), atol=1e-6)
    counts = pd.read_csv(out / "counts.csv")
    assert counts["class"].tolist() == classes
    assert counts["count"].sum() == 5 and counts["percent"].sum() == pytest.approx(100.0, abs=0.05)
    assert counts.set_index("class")["count"].to_dict() == {c: int((preds["predicted"] == c).sum()) for c in classes}
    unreadable = pd.read_csv(out / "unreadable.csv")
    assert unreadable["path"].tolist() == ["broken.png", "notes.txt"]  # the hidden file is ignored
    summary = runs.read_json(out / "summary.json")
    assert summary["classes"] == classes

    # Low confidence: below the 5 % quantile of the top probability of the run's correct
    # validation predictions, recomputed here from predictions_val.csv with numpy.
    val = pd.read_csv(run_dir.predictions("val"))
    val_probs = val[[f"prob_{c}" for c in classes]].to_numpy()
    correct = val["label"].to_numpy() == val["predicted"].to_numpy()
    threshold = np.quantile(val_probs.max(axis=1)[correct], 0.05)
    assert summary["low_confidence"]["threshold"] == pytest.approx(threshold, abs=1e-5)
    assert preds["low_confidence"].tolist() == (preds["confidence"] < threshold).tolist()
    assert summary["low_confidence"]["n"] == int((preds["confidence"] < threshold).sum())
    low_by_class = preds[preds["low_confidence"]].groupby("predicted").size()
    assert counts.set_index("class")["n_low_confidence"].to_dict() == {c: int(low_by_class.get(c, 0)) for c in classes}
    # Beside each count, the class's recall on validation (from the run's own predictions).
    recall = {c: float((val.loc[val["label"] == c, "predicted"] == c).mean()) for c in classes}
    assert counts.set_index("class")["val_recall"].to_dict() == pytest.approx(
        {c: round(r, 4) for c, r in recall.items()}, abs=1e-4)
    assert "low-confidence" in printed and "val recall" in printed


def test_an_empty_folder_is_an_error_not_a_zero_count(classifier_run, tmp_path, capsys):
    run_dir = classifier_run
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "readme.txt").write_text("no cells here")
    assert predict_cli.main([str(empty), "-c", str(run_dir.best_ckpt), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "holds no image files" in err and "1 other file(s) skipped" in err
    assert not (tmp_path / "o").exists()


def test_a_folder_whose_images_all_fail_to_decode_is_an_error_not_a_zero_count(classifier_run, tmp_path, capsys):
    run_dir = classifier_run
    broken = tmp_path / "broken"
    (broken / "slide").mkdir(parents=True)
    (broken / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (broken / "slide" / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (broken / "c.tif").write_text("text under an image extension")
    (broken / "notes.txt").write_text("not an image")
    assert predict_cli.main([str(broken), "-c", str(run_dir.best_ckpt), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err  # one paragraph
    assert str(broken) in err and "none of its 3 image file(s) could be decoded" in err
    assert all(name in err for name in ("a.png", "slide/b.jpg", "c.tif")) and "1 other file(s) skipped" in err
    assert not (tmp_path / "o").exists()


def test_reproduces_the_runs_own_test_predictions(classifier_run, tmp_path):
    """Same eval transform as training: the run's recorded probabilities come back."""
    run_dir = classifier_run
    data_root = Path(runs.read_json(run_dir.metrics)["data_root"])
    out = tmp_path / "out"
    assert predict_cli.main([str(data_root), "-c", str(run_dir.best_ckpt), "--out", str(out), "--batch-size", "50",
                         "--device", "cpu"]) == 0  # CPU like the run: no TF32 differences
    recorded = pd.read_csv(run_dir.predictions("test")).set_index("path")
    ours = pd.read_csv(out / "predictions.csv").set_index("path").loc[recorded.index]
    prob_cols = [c for c in recorded.columns if c.startswith("prob_")]
    np.testing.assert_allclose(ours[prob_cols].to_numpy(), recorded[prob_cols].to_numpy(), atol=1e-4)
    assert (ours["predicted"] == recorded["predicted"]).all()


def test_two_checkpoints_majority_vote(classifier_run, images, tmp_path):
    run_dir = classifier_run
    single, double = tmp_path / "one", tmp_path / "two"
    ckpt = str(run_dir.best_ckpt)
    assert predict_cli.main([str(images), "-c", ckpt, "--out", str(single)]) == 0
    assert predict_cli.main([str(images), "-c", ckpt, "-c", ckpt, "--out", str(double)]) == 0
    one, two = pd.read_csv(single / "predictions.csv"), pd.read_csv(double / "predictions.csv")
    classes = _classes(run_dir)
    assert [c for c in two.columns if c.startswith("votes_")] == [f"votes_{c}" for c in classes]
    assert (two[[f"votes_{c}" for c in classes]].sum(axis=1) == 2).all()
    assert (two["confidence"] == 1.0).all()  # vote share of identical members
    assert (two["predicted"] == one["predicted"]).all()
    # Two loose checkpoints were never validated together: no flag, and the summary says why.
    assert two["low_confidence"].isna().all()
    assert "never validated together" in runs.read_json(double / "summary.json")["low_confidence"]["not_flagged_because"]
    assert predict_cli.main([str(images), "-c", ckpt, "-c", ckpt, "--method", "soft", "--out", str(tmp_path / "s")]) == 0
    soft = pd.read_csv(tmp_path / "s" / "predictions.csv")
    np.testing.assert_allclose(soft["confidence"], one["confidence"], atol=1e-6)


def test_ensemble_folder(classifier_run_copy, images, tmp_path):
    run_dir = classifier_run_copy
    exp_dir = run_dir.root.parents[2]
    assert ensemble_cli.main([str(exp_dir), "k=1", "method=majority"]) == 0
    out = tmp_path / "out"
    assert predict_cli.main([str(images), "--ensemble", str(exp_dir / "ensembles" / "majority-k1"),
                         "--out", str(out)]) == 0
    summary = runs.read_json(out / "summary.json")
    assert summary["method"] == "majority"
    assert summary["checkpoints"] == [str(run_dir.best_ckpt)]
    assert pd.read_csv(out / "counts.csv")["count"].sum() == 5
    # The ensemble's threshold is on its own confidence (vote share), chosen on its validation predictions.
    ens_metrics = runs.read_json(exp_dir / "ensembles" / "majority-k1" / "metrics.json")
    assert ens_metrics["confidence_threshold"]["kind"] == "vote_share"
    assert summary["low_confidence"]["threshold"] == ens_metrics["confidence_threshold"]["value"] == 1.0
    assert summary["low_confidence"]["n"] == 0  # one member: every vote is unanimous


def test_class_mismatch_names_both_checkpoints(classifier_run, images, tmp_path, capsys):
    run_dir = classifier_run
    ckpt = torch.load(run_dir.best_ckpt, map_location="cpu", weights_only=True)
    ckpt["class_names"] = list(reversed(ckpt["class_names"]))
    other = tmp_path / "reordered.pt"
    torch.save(ckpt, other)
    code = predict_cli.main([str(images), "-c", str(run_dir.best_ckpt), "-c", str(other), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert str(run_dir.best_ckpt) in err and str(other) in err and "different class names" in err


def test_bad_input_exits_2(classifier_run, images, tmp_path, capsys):
    run_dir = classifier_run
    ckpt = str(run_dir.best_ckpt)
    assert predict_cli.main([str(tmp_path / "missing"), "-c", ckpt, "--out", str(tmp_path / "o")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert predict_cli.main([str(images), "--out", str(tmp_path / "o")]) == 2
    assert "no model given" in capsys.readouterr().err
    assert predict_cli.main([str(images), "-c", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert predict_cli.main([str(images), "-c", str(run_dir.last_ckpt), "--out", str(tmp_path / "o")]) == 2
    assert "not a bench-train best.pt" in capsys.readouterr().err
    assert predict_cli.main([str(images), "--ensemble", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "members.csv" in capsys.readouterr().err
