"""Another lab's cells (bench.predict.external, bench.predict.experiment): a whole experiment at once,
presets of public sets, classes the set lacks named, and calibration and referral with what the run
chose on its own validation images."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench import runs
from bench.cli.evaluate import main as evaluate_main
from bench.metrics.calibration import confidence_record
from bench.predict.experiment import evaluate_experiment, load_preset, presets
from bench.runs import files as run_files


@pytest.fixture
def trained(make_cfg):
    from bench.training import run_training

    out = run_training(make_cfg("trainer.epochs=1"))
    assert out["status"] == "completed", out.get("error")
    return Path(out["run_dir"])


def _lab_folder(tmp_path, run_dir: Path, folders: dict[str, str], n: int = 3) -> Path:
    """An external folder built from the run's own images: folder name -> the class whose images it gets."""
    metrics = runs.read_json(run_dir / "metrics.json")
    root = Path(metrics["data_root"])
    lab = tmp_path / "lab"
    for folder, cls in folders.items():
        (lab / folder).mkdir(parents=True)
        for src in sorted((root / cls).iterdir())[:n]:
            shutil.copy(src, lab / folder / src.name)
    return lab


def test_a_preset_maps_the_folders_of_a_public_set_as_distributed(tmp_path, trained):
    assert {"segmentation_wbc_dataset1", "munich_aml", "raabin_wbc", "lisc", "bccd_wbc"} <= set(presets())
    munich = load_preset("munich_aml")
    assert munich["map"]["NGS"] == "neutrophil" and munich["map"]["MYB"] == "ig" and "MYO" not in munich["map"]
    assert munich["licence"] and munich["citation"].startswith("Matek")
    # Munich's folder names: segmented neutrophils, typical lymphocytes, and myeloblasts (no PBC class).
    lab = _lab_folder(tmp_path, trained, {"NGS": "neutrophil", "LYT": "lymphocyte", "MYO": "ig"})
    assert evaluate_main([str(trained), str(lab), "--set", "munich_aml", "--device", "cpu"]) == 0
    m = runs.read_json(trained / "external" / "munich_aml" / "metrics.json")
    assert m["mapping"] == {"LYT": "lymphocyte", "NGS": "neutrophil"} and m["left_out_folders"] == ["MYO"]
    assert m["n"] == 6 and m["n_left_out"] == 3
    # The six other classes of the model have no image here: named, and undefined (None), not zero.
    assert set(m["classes_absent"]) == {"basophil", "eosinophil", "erythroblast", "ig", "monocyte", "platelet"}
    assert m["per_class"]["basophil"]["sensitivity"] is None


def test_external_calibration_uses_the_runs_validation_choices_never_the_external_images(tmp_path, trained):
    lab = _lab_folder(tmp_path, trained, {"neutrophil": "neutrophil", "lymphocyte": "lymphocyte"})
    recorded = runs.read_json(trained / "metrics.json")["calibration"]
    classes = runs.read_json(trained / "metrics.json")["classes"]
    _, labels, _, probs = run_files.read_predictions(trained / "predictions_val.csv", classes)
    # The run's record was fitted on its validation predictions (the same numbers, recomputed here).
    assert recorded["temperature"] == pytest.approx(confidence_record({"val": (probs, labels)})["temperature"], rel=1e-4)
    assert evaluate_main([str(trained), str(lab), "--name", "lab", "--device", "cpu"]) == 0
    ext = runs.read_json(trained / "external" / "lab" / "metrics.json")["calibration"]
    assert ext["temperature"] == recorded["temperature"]
    assert ext["referral_threshold"] == recorded["referral"]["threshold"]
    assert 0 <= ext["referral"]["referred_share"] <= 1 and ext["n"] == 6


def test_a_whole_experiment_is_evaluated_once_and_only_new_models_later(tmp_path, trained, capsys):
    exp_dir = trained.parents[2]
    lab = _lab_folder(tmp_path, trained, {"neutrophil": "neutrophil", "monocyte": "monocyte"})
    first = evaluate_experiment(exp_dir, lab, name="lab", progress=False)
    assert [r.get("skipped", False) for r in first] == [False]
    again = evaluate_experiment(exp_dir, lab, name="lab", progress=False)
    assert [r.get("skipped", False) for r in again] == [True]
    # Other files, same name: evaluated again (the fingerprint differs).
    (lab / "neutrophil" / sorted((lab / "neutrophil").iterdir())[0].name).unlink()
    assert [r.get("skipped", False) for r in evaluate_experiment(exp_dir, lab, name="lab", progress=False)] == [False]
    board = (exp_dir / "leaderboard.csv").read_text().splitlines()[0].split(",")
    assert {"ext_lab_acc", "ext_lab_balanced_acc", "ext_lab_macro_f1"} <= set(board)
    assert evaluate_main([str(exp_dir), str(lab), "--name", "lab", "--device", "cpu"]) == 0
    assert "(done before)" in capsys.readouterr().out


def test_calibrated_predictions_use_each_runs_validation_temperature_and_say_so(tmp_path, trained):
    import numpy as np

    from bench.cli.predict import main as predict_main
    from bench.metrics.calibration import apply_temperature

    lab = _lab_folder(tmp_path, trained, {"x": "neutrophil"}, n=4)
    for flag, out in (([], "raw"), (["--calibrated"], "cal")):
        assert predict_main([str(lab), "-c", str(trained / "best.pt"), "--out", str(tmp_path / out),
                             "--device", "cpu", *flag]) == 0
    raw, cal = (pd_read(tmp_path / o / "predictions.csv") for o in ("raw", "cal"))
    t = runs.read_json(trained / "metrics.json")["calibration"]["temperature"]
    probs = [c for c in raw.columns if c.startswith("prob_")]
    np.testing.assert_allclose(cal[probs].to_numpy(), apply_temperature(raw[probs].to_numpy(), t), atol=2e-6)
    said = runs.read_json(tmp_path / "cal" / "summary.json")["probabilities"]
    assert said.startswith("calibrated") and f"{t:.3f}" in said
    assert runs.read_json(tmp_path / "raw" / "summary.json")["probabilities"] == "raw"


def pd_read(path):
    import pandas as pd

    return pd.read_csv(path).sort_values("path").reset_index(drop=True)
