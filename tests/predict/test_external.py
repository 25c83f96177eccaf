"""bench-evaluate (bench.predict.external): a run scored on another lab's folder, its folders mapped
to the run's classes; on a copy of the session's tiny run (conftest's classifier_run_copy)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import runs
from bench.cli import evaluate as evaluate_cli


# --------------------------------------------------------------------------- bench-evaluate
def _external_set(tmp_path, run_dir) -> tuple[Path, pd.DataFrame]:
    """Test images of the run copied into another lab's folders: 'Neutrophil' (only the case
    differs), 'Lympho' (needs --map) and 'Smudge' (a class the model does not have)."""
    from bench import runs as runs_mod

    recorded = pd.read_csv(run_dir.predictions("test"))
    root = Path(runs_mod.read_json(run_dir.metrics)["data_root"])
    lab = tmp_path / "lab2"
    chosen = []
    for folder, label in (("Neutrophil", "neutrophil"), ("Lympho", "lymphocyte"), ("Smudge", "monocyte")):
        rows = recorded[recorded["label"] == label].head(4)
        (lab / folder).mkdir(parents=True)
        for row in rows.itertuples():
            shutil.copy(root / row.path, lab / folder / Path(row.path).name)
        chosen.append(rows.assign(folder=folder))
    return lab, pd.concat(chosen)


def test_evaluate_on_another_labs_folder(classifier_run_copy, tmp_path, capsys):
    from bench.results import leaderboard as lb

    run_dir = classifier_run_copy
    exp_dir = run_dir.root.parents[2]
    lab, chosen = _external_set(tmp_path, run_dir)
    assert evaluate_cli.main([str(run_dir.root), str(lab), "--map", "Lympho=lymphocyte", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "Smudge" in printed and "left out" in printed
    metrics = runs.read_json(run_dir.root / "external" / "lab2" / "metrics.json")
    # Expected: the run's own recorded test predictions for those images (same eval transform),
    # scored by hand on the two mapped folders; Smudge is left out.
    kept = chosen[chosen["folder"] != "Smudge"]
    expected_acc = float((kept["label"] == kept["predicted"]).mean())
    assert metrics["n"] == 8 and metrics["accuracy"] == pytest.approx(expected_acc)
    recalls = [float((g["label"] == g["predicted"]).mean()) for _, g in kept.groupby("label")]
    assert metrics["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    assert metrics["mapping"] == {"Lympho": "lymphocyte", "Neutrophil": "neutrophil"}
    assert metrics["left_out_folders"] == ["Smudge"] and metrics["n_left_out"] == 4
    board = lb.build_leaderboard(exp_dir)
    row = board[board["kind"] == "model"].iloc[0]
    assert row["ext_lab2_acc"] == pytest.approx(expected_acc)
    assert row["ext_lab2_balanced_acc"] == pytest.approx(np.mean(recalls))


def test_evaluate_names_a_bad_mapping(classifier_run, tmp_path, capsys):
    run_dir = classifier_run
    lab, _ = _external_set(tmp_path, run_dir)
    assert evaluate_cli.main([str(run_dir.root), str(lab), "--map", "Lympho=lymph"]) == 2
    assert "'Lympho': 'lymph'" in capsys.readouterr().err
    assert evaluate_cli.main([str(run_dir.root), str(lab), "--map", "Nope=lymphocyte"]) == 2
    assert "Nope" in capsys.readouterr().err
