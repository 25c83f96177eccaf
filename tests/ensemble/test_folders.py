"""Ensemble folders (bench.ensemble.folders) and bench-ensemble on hand-built run folders:
candidates aligned by path, the folder and its leaderboard row, every method, bad input, and the
paper's own fixed ensemble."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import runs
from bench.cli import ensemble as ensemble_cli
from bench.ensemble import folders as ens_runs
from bench.metrics import classification_metrics
from bench.results import leaderboard as lb

from tests.helpers import random_stack


CLASSES = ["basophil", "eosinophil", "ig"]


# --------------------------------------------------------------------------- run folders and the CLI
def _write_run(exp, model, seed, y_val, p_val, y_test, p_test, *, shuffle=0, status="completed"):
    run = runs.RunDir.for_run(exp, model, seed)
    run.write_status(status, config_hash="x", model=model, seed=seed)
    metrics = {"model": model, "seed": seed, "status": status, "classes": CLASSES, "params_m": 1.5, "gflops": 0.25}
    for split, y, p in (("val", y_val, p_val), ("test", y_test, p_test)):
        pred = p.argmax(1)
        frame = pd.DataFrame({"path": [f"{CLASSES[c]}/{split}{i:03d}.png" for i, c in enumerate(y)],
                              "label": [CLASSES[c] for c in y], "predicted": [CLASSES[c] for c in pred]})
        for j, c in enumerate(CLASSES):
            frame[f"prob_{c}"] = p[:, j].round(6)
        if shuffle:
            frame = frame.sample(frac=1.0, random_state=shuffle)
        runs.write_csv_atomic(run.predictions(split), frame)
        metrics[split] = classification_metrics(y, pred, CLASSES)
    runs.write_json_atomic(run.metrics, metrics)
    return run


@pytest.fixture
def exp(tmp_path):
    rng = np.random.default_rng(11)
    exp_dir = tmp_path / "exp"
    y_val, y_test = rng.integers(0, 3, 40), rng.integers(0, 3, 30)
    for i, model in enumerate(["resnet18", "vgg16", "alexnet", "densenet121", "timm/tiny"]):
        pv = random_stack(np.random.default_rng(i), 1, 40, 3)[0][0]
        pt = random_stack(np.random.default_rng(100 + i), 1, 30, 3)[0][0]
        # make each member informative about the true labels
        pv[np.arange(40), y_val] += 0.3 + 0.1 * i
        pt[np.arange(30), y_test] += 0.3 + 0.1 * i
        _write_run(exp_dir, model, 0, y_val, pv / pv.sum(1, keepdims=True), y_test,
                   pt / pt.sum(1, keepdims=True), shuffle=i)
    runs.RunDir.for_run(exp_dir, "failed_net", 0).write_status("failed", config_hash="x", error="boom")
    lb.write_leaderboard(exp_dir)
    return exp_dir


def test_load_candidates_aligns_by_path_in_leaderboard_order(exp):
    cands = ens_runs.load_candidates(exp)
    board = lb.build_leaderboard(exp)
    ranked = board[board["rank"].notna()]
    assert cands.ids == [f"{m}/seed{s}" for m, s in zip(ranked["model"], ranked["seed"])]
    assert cands.classes == CLASSES
    val = cands.splits["val"]
    assert list(val.paths) == sorted(val.paths) and val.probs.shape == (5, 40, 3)
    for i, rd in enumerate(cands.run_dirs):  # the recorded predictions are reproduced after sorting
        frame = pd.read_csv(rd.predictions("val")).sort_values("path")
        assert [CLASSES[c] for c in val.probs[i].argmax(1)] == frame["predicted"].tolist()


def test_cli_writes_folder_and_leaderboard_row(exp, capsys):
    assert ensemble_cli.main([str(exp), "k=3", "method=majority"]) == 0
    out = capsys.readouterr().out
    assert "majority-k3" in out and "test" in out
    folder = exp / "ensembles" / "majority-k3"
    metrics = runs.read_json(folder / "metrics.json")
    members = pd.read_csv(folder / "members.csv")
    assert metrics["method"] == "majority" and metrics["k"] == 3 and metrics["classes"] == CLASSES
    assert len(members) == 3 and list(members["member"]) == [m["member"] for m in metrics["members"]]
    cands = ens_runs.load_candidates(exp)
    assert list(members["member"]) == cands.ids[:3]  # no tie here: the top 3 by validation
    preds = pd.read_csv(folder / "predictions_test.csv")
    assert list(preds.columns[:3]) == ["path", "label", "predicted"]
    assert [f"votes_{c}" for c in CLASSES] == [c for c in preds.columns if c.startswith("votes_")]
    assert (preds[[f"votes_{c}" for c in CLASSES]].sum(axis=1) == 3).all()
    # the metric set is the one of bench.metrics, from the written predictions
    idx = {c: i for i, c in enumerate(CLASSES)}
    expected = classification_metrics(preds["label"].map(idx), preds["predicted"].map(idx), CLASSES)
    assert metrics["test"] == expected
    conf = pd.read_csv(folder / "confusion_test.csv")
    assert conf["true"].tolist() == CLASSES and conf.iloc[:, 1:].to_numpy().tolist() == expected["confusion_matrix"]

    board = pd.read_csv(exp / "leaderboard.csv")
    row = board[board["kind"] == "ensemble"]
    assert len(row) == 1
    row = row.iloc[0]
    assert row["model"] == "majority-k3" and row["status"] == "completed"
    assert row["members"] == ";".join(members["member"])
    assert row["test_acc"] == pytest.approx(expected["accuracy"])
    assert row["val_acc"] == pytest.approx(metrics["val"]["accuracy"])
    for c in CLASSES:
        assert row[c] == pytest.approx(expected["per_class"][c]["accuracy"])
    assert row["test_f1"] == pytest.approx(expected["macro"]["f1"])
    assert (board["kind"] == "model").sum() == 6

    # A later training run rewrites the leaderboard: the ensemble row survives.
    lb.write_leaderboard(exp)
    board = pd.read_csv(exp / "leaderboard.csv")
    kept = board[board["kind"] == "ensemble"]
    assert len(kept) == 1 and kept.iloc[0]["members"] == row["members"]
    assert kept.iloc[0]["test_acc"] == pytest.approx(row["test_acc"])

    # Same name again: replaced, not duplicated; another name: added.
    assert ensemble_cli.main([str(exp), "k=3", "method=majority"]) == 0
    assert ensemble_cli.main([str(exp), "k=2", "method=soft", "name=my-soft"]) == 0
    board = pd.read_csv(exp / "leaderboard.csv")
    assert sorted(board.loc[board["kind"] == "ensemble", "model"]) == ["majority-k3", "my-soft"]
    soft = pd.read_csv(exp / "ensembles" / "my-soft" / "predictions_val.csv")
    assert not any(c.startswith("votes_") for c in soft.columns)


@pytest.mark.parametrize("method", ["weighted", "greedy", "best_subset"])
def test_cli_other_methods(exp, method):
    assert ensemble_cli.main([str(exp), "k=2", f"method={method}", "top_n=4", "steps=5"]) == 0
    name = "greedy" if method == "greedy" else f"{method}-k2"
    metrics = runs.read_json(exp / "ensembles" / name / "metrics.json")
    assert metrics["method"] == method
    single_best = max(m["val_acc"] for m in metrics["candidates"])
    if method in ("greedy",):
        assert metrics["val"]["accuracy"] >= single_best


def test_cli_weights_option(exp):
    cands = ens_runs.load_candidates(exp)
    a, b = cands.ids[0], cands.ids[3]
    assert ensemble_cli.main([str(exp), "method=weighted", f"weights={a}=2;{b}=1", "name=w"]) == 0
    members = pd.read_csv(exp / "ensembles" / "w" / "members.csv")
    assert members["member"].tolist() == [a, b]
    assert members["weight"].tolist() == pytest.approx([2 / 3, 1 / 3], abs=1e-6)


def test_cli_errors(exp, tmp_path, capsys):
    assert ensemble_cli.main([str(exp), "k=6"]) == 2  # 5 completed runs
    assert "fewer than k=6" in capsys.readouterr().err
    assert ensemble_cli.main([str(exp), "kk=3"]) == 2
    assert "not an option" in capsys.readouterr().err
    assert ensemble_cli.main([str(exp), "method=stacking"]) == 2
    assert "stacking" in capsys.readouterr().err
    assert ensemble_cli.main([str(tmp_path / "nowhere")]) == 2
    assert "no runs/ folder" in capsys.readouterr().err


def test_mismatched_images_name_both_runs(exp):
    y = np.zeros(39, dtype=int)  # one validation image fewer
    p = np.tile([0.6, 0.3, 0.1], (39, 1))
    _write_run(exp, "zzz_net", 0, y, p, np.zeros(30, dtype=int), np.tile([0.6, 0.3, 0.1], (30, 1)))
    with pytest.raises(ens_runs.EnsembleError, match=r"zzz_net/seed0") as info:
        ens_runs.load_candidates(exp)
    assert "different val images" in str(info.value)


def test_recorded_prediction_wins_a_rounding_tie(tmp_path):
    exp = tmp_path / "exp"
    y = np.array([0, 1])
    p = np.array([[0.5, 0.5, 0.0], [0.2, 0.8, 0.0]])
    run = _write_run(exp, "m", 0, y, p, y, p)
    frame = pd.read_csv(run.predictions("val"))
    frame.loc[0, "predicted"] = "eosinophil"  # the unrounded probability was higher for class 1
    runs.write_csv_atomic(run.predictions("val"), frame)
    cands = ens_runs.load_candidates(exp)
    assert cands.splits["val"].probs[0].argmax(1).tolist() == [1, 1]


@pytest.mark.fidelity
def test_the_papers_own_ensemble_is_a_fixed_hard_vote(tmp_path):
    rng = np.random.default_rng(4)
    exp = tmp_path / "gavas"
    y_val, y_test = rng.integers(0, 3, 30), rng.integers(0, 3, 20)
    for i, model in enumerate(["wide_resnet50_2", "vgg19", "wide_resnet101_2", "resnet34", "densenet161"]):
        pv = random_stack(np.random.default_rng(i), 1, 30, 3)[0][0]
        pt = random_stack(np.random.default_rng(50 + i), 1, 20, 3)[0][0]
        bonus = 3.0 if model == "densenet161" else 0.2  # the best on validation is not one of the paper's four
        pv[np.arange(30), y_val] += bonus
        pt[np.arange(20), y_test] += bonus
        _write_run(exp, model, 0, y_val, pv / pv.sum(1, keepdims=True), y_test, pt / pt.sum(1, keepdims=True))
    result = ens_runs.run_ensemble(exp, method="paper")
    assert result.name == "paper-members"
    # Its members were chosen on the paper's test set: labelled so wherever its numbers appear (issue 24),
    # and a report whose only ensemble it is compares with it under that label, never "test never selects".
    assert result.leaderboard_row["selected_on"] == "test"
    from bench.report import load_results
    from bench.report.markdown import _statistics_md
    from bench.report.tables import statistics_table

    only = load_results(exp)
    assert only.ensemble.label == "ensemble paper-members (selected on test)"
    text = "\n".join(_statistics_md(only, statistics_table(only), 0.05, 0.95, 100, 0))
    assert "p vs ensemble (selected on test)" in text and "ensemble paper-members (selected on test) |" in text
    assert "test never selects, except in ensemble paper-members (selected on test)" in text
    assert sorted(m["model"] for m in result.metrics["members"]) == sorted(ens_runs.PAPER_MEMBERS)
    assert result.metrics["voting"] == "hard" and result.metrics["selection"]["fixed_members"]
    # The four models, as printed in the published Table 3 (our reference copy).
    table3 = pd.read_csv(Path(__file__).resolve().parents[2] / "bench" / "reference" / "gavas2021_table3.csv")
    row = table3[table3["method"].str.startswith("ensemble")]["method"].item()
    assert row == "ensemble: majority vote of " + ", ".join(ens_runs.PAPER_MEMBERS)
    # The report's headline ensemble stays one chosen on validation.
    majority = ens_runs.run_ensemble(exp, method="majority", k=3)
    assert majority.leaderboard_row["selected_on"] == "validation"
    res = load_results(exp)
    assert res.ensemble.model == "majority-k3"
    with pytest.raises(ens_runs.EnsembleError, match="resnet34/seed1"):
        ens_runs.run_ensemble(exp, method="paper", seed=1)
    assert runs.read_json(exp / "ensembles" / "paper-members" / "metrics.json")["k"] == 4
