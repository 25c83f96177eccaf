"""The report's generalisation section (bench.report.generalisation): in-domain against external
balanced accuracy, the drop with its interval, the rank agreement, from saved predictions only."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kendalltau
from sklearn.metrics import balanced_accuracy_score

from bench import runs
from bench.predict.experiment import evaluate_experiment
from bench.report import build_report, load_results
from bench.report.generalisation import generalisation_table, rank_agreement


@pytest.fixture
def travelled(make_cfg, tmp_path):
    """Three runs (seeds) of one experiment, evaluated on a 'lab' folder made of their own images."""
    from bench.training import run_training

    dirs = []
    for seed in (0, 1, 2):
        out = run_training(make_cfg("trainer.epochs=2", f"seed={seed}"))
        assert out["status"] == "completed", out.get("error")
        dirs.append(Path(out["run_dir"]))
    root = Path(runs.read_json(dirs[0] / "metrics.json")["data_root"])
    lab = tmp_path / "lab"
    for cls in ("neutrophil", "lymphocyte", "monocyte"):
        (lab / cls).mkdir(parents=True)
        for src in sorted((root / cls).iterdir())[:6]:
            shutil.copy(src, lab / cls / src.name)
    exp_dir = dirs[0].parents[2]
    evaluate_experiment(exp_dir, lab, name="lab", progress=False)
    return exp_dir, dirs


def test_the_table_holds_each_runs_balanced_accuracies_and_a_drop_inside_its_interval(travelled):
    exp_dir, _ = travelled
    res = load_results(exp_dir)
    table = generalisation_table(res, n_resamples=200, seed=0)
    assert len(table) == 3
    root_of = {e.label: Path(e.root) for e in res.entries}
    for row in table.to_dict("records"):
        run_dir = root_of[row["label"]]
        test = pd.read_csv(run_dir / "predictions_test.csv")
        lab = pd.read_csv(run_dir / "external" / "lab" / "predictions.csv")
        assert row["test_bal_acc"] == pytest.approx(balanced_accuracy_score(test["label"], test["predicted"]))
        assert row["lab_bal_acc"] == pytest.approx(balanced_accuracy_score(lab["label"], lab["predicted"]))
        assert row["lab_drop_low"] <= row["lab_drop"] <= row["lab_drop_high"]
        assert 0 <= row["lab_referred"] <= 1 and row["test_ece"] >= 0
    verdict = rank_agreement(table, "lab")
    expected = kendalltau(table["test_bal_acc"], table["lab_bal_acc"])
    assert verdict["tau"] == pytest.approx(expected[0]) or np.isnan(expected[0])
    assert "carry over to lab" in verdict["verdict"]


def test_the_report_gets_a_section_on_how_the_models_travel(travelled):
    exp_dir, _ = travelled
    text = build_report(exp_dir, n_resamples=100).read_text()
    assert "## How the models travel" in text and "### lab" in text and "*Verdict:*" in text
    assert (exp_dir / "report" / "reliability_test.png").is_file()
    assert (exp_dir / "report" / "risk_coverage_test.png").is_file()
