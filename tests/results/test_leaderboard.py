"""bench.results.leaderboard on hand-built run folders with real metric sets: rows, ranking on
validation (and by each run's select_by), published columns only beside runs of the paper's recipe,
ensembles, detectors, runs on a class subset kept apart."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from bench import runs
from bench.cli import leaderboard as leaderboard_cli
from bench.metrics import classification_metrics
from bench.results import (leaderboard as lb, rows as leaderboard_rows, published as paper_reference,
    records as result_records, ranking)
from bench.training import run_training as train



CLASSES = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"]


def _metric_set(n_wrong: int, n_per_class: int = 5) -> dict:
    """A real metric set: every class has n_per_class images; the first n_wrong
    images of class 0 and 2 are predicted as the next class."""
    y_true = np.repeat(np.arange(len(CLASSES)), n_per_class)
    y_pred = y_true.copy()
    for cls in (0, 2):
        idx = np.flatnonzero(y_true == cls)[:n_wrong]
        y_pred[idx] = cls + 1
    return classification_metrics(y_true, y_pred, CLASSES)


def _write_run(exp_dir, model, seed, *, val_wrong=0, test_wrong=0, status="completed",
               error=None, with_metrics=True, **extra):
    run = runs.RunDir.for_run(exp_dir, model, seed)
    run.write_status(status, config_hash="abc", error=error, model=model, seed=seed)
    if status == "completed" and with_metrics:
        metrics = {
            "experiment": "exp", "model": model, "seed": seed, "status": "completed",
            "classes": CLASSES, "epochs": 3, "epochs_run": 3, "best_epoch": 2,
            "val": _metric_set(val_wrong), "test": _metric_set(test_wrong),
            "params_m": 11.2, "gflops": 1.8, "input_size": 224,
            "train_time_s": 12.5, "train_img_s": 100.0, "eval_img_s": 300.0, "peak_mem_mb": None,
            "device": "cpu", "env": {}, "protocol_deviations": [],
        }
        metrics.update(extra)
        runs.write_json_atomic(run.metrics, metrics)
    return run


@pytest.fixture
def exp(tmp_path):
    exp_dir = tmp_path / "exp"
    # resnet18: best on validation, worse on test. vgg19: the reverse.
    _write_run(exp_dir, "resnet18", 0, val_wrong=0, test_wrong=2)
    _write_run(exp_dir, "vgg19", 0, val_wrong=1, test_wrong=0)
    _write_run(exp_dir, "timm/tiny_net", 0, val_wrong=3, test_wrong=1)
    _write_run(exp_dir, "alexnet", 0, status="failed", error="RuntimeError: out of memory")
    _write_run(exp_dir, "squeezenet1_0", 0, status="running")
    return exp_dir


def _row(board, model, seed=0):
    rows = board[(board["model"] == model) & (board["seed"] == seed)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_rows_and_per_class_columns_match_run_folders(exp):
    board = lb.build_leaderboard(exp)
    assert len(board) == 5
    assert set(board["kind"]) == {"model"}
    for model in ("resnet18", "vgg19", "timm/tiny_net"):
        metrics = runs.read_json(runs.RunDir.for_run(exp, model, 0).metrics)
        row = _row(board, model)
        assert row["status"] == "completed"
        assert row["val_acc"] == pytest.approx(metrics["val"]["accuracy"])
        assert row["test_acc"] == pytest.approx(metrics["test"]["accuracy"])
        for cls in CLASSES:
            assert row[cls] == pytest.approx(metrics["test"]["per_class"][cls]["accuracy"])
        for key in ("precision", "sensitivity", "specificity", "f1"):
            assert row[f"test_{key}"] == pytest.approx(metrics["test"]["macro"][key])
        assert row["params_m"] == pytest.approx(11.2)
        assert row["epochs"] == 3 and row["best_epoch"] == 2
    cols = list(board.columns)
    assert cols[:7] == ["rank", "kind", "model", "seed", "status", "val_acc", "test_acc"]
    assert cols[7:7 + len(CLASSES)] == CLASSES
    assert cols[-2:] == ["paper_test_acc", "paper_diff"]


def test_ranked_by_validation_not_test(exp):
    board = lb.build_leaderboard(exp)
    resnet, vgg = _row(board, "resnet18"), _row(board, "vgg19")
    assert vgg["test_acc"] > resnet["test_acc"] and resnet["val_acc"] > vgg["val_acc"]
    assert resnet["rank"] == 1 and vgg["rank"] == 2 and _row(board, "timm/tiny_net")["rank"] == 3
    assert list(board["model"][:3]) == ["resnet18", "vgg19", "timm/tiny_net"]


def test_ties_broken_by_model_then_seed(tmp_path):
    for model, seed in [("b_net", 1), ("b_net", 0), ("a_net", 5)]:
        _write_run(tmp_path, model, seed, val_wrong=1)
    board = lb.build_leaderboard(tmp_path)
    assert list(zip(board["model"], board["seed"], board["rank"])) == [
        ("a_net", 5, 1), ("b_net", 0, 2), ("b_net", 1, 3)]


def test_failed_and_running_rows_are_unranked_and_last(exp):
    board = lb.build_leaderboard(exp)
    failed, running = _row(board, "alexnet"), _row(board, "squeezenet1_0")
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: out of memory"
    assert running["status"] == "running"
    assert pd.isna(failed["rank"]) and pd.isna(running["rank"]) and pd.isna(failed["test_acc"])
    assert list(board["status"][-2:]) == ["failed", "running"]


def test_paper_columns(exp):
    board = lb.build_leaderboard(exp)
    ref = pd.read_csv(paper_reference.reference_dir() / "gavas2021_table2.csv").set_index("model")["overall"]
    vgg = _row(board, "vgg19")
    assert vgg["paper_test_acc"] == pytest.approx(ref["vgg19"])
    assert vgg["paper_diff"] == pytest.approx(vgg["test_acc"] - ref["vgg19"])
    assert pd.isna(_row(board, "timm/tiny_net")["paper_test_acc"])
    assert pd.isna(_row(board, "timm/tiny_net")["paper_diff"])
    assert vgg["protocol"] == "paper"


def test_paper_difference_only_for_runs_that_follow_the_paper(tmp_path):
    short = ["trainer.epochs=3 (paper: 25)", "model.pretrained=false (paper: true)"]
    _write_run(tmp_path, "vgg19", 0, protocol_deviations=short)
    _write_run(tmp_path, "vgg19", 1)
    _write_run(tmp_path, "resnet18", 0, protocol_deviations=None)  # written before the check existed
    board = lb.build_leaderboard(tmp_path)
    deviating, following, unknown = _row(board, "vgg19", 0), _row(board, "vgg19", 1), _row(board, "resnet18")
    assert deviating["protocol"] == "trainer.epochs=3 (paper: 25); model.pretrained=false (paper: true)"
    assert pd.notna(deviating["paper_test_acc"]) and pd.isna(deviating["paper_diff"])
    assert following["protocol"] == "paper" and pd.notna(following["paper_diff"])
    assert unknown["protocol"] == "unknown" and pd.isna(unknown["paper_diff"])
    summary = lb.summary_frame(board[board["kind"] == "model"], CLASSES).set_index("model")
    assert pd.isna(summary.loc["vgg19", "paper_diff"])  # one of its seeds deviates
    assert "2 run(s) of models the paper trained depart from its protocol" in lb.format_leaderboard(board)
    assert "depart" not in lb.format_leaderboard(board[board["protocol"] == "paper"])


def test_missing_reference_gives_empty_paper_columns(exp, tmp_path):
    assert paper_reference.load_reference(tmp_path / "absent.csv") == {}
    frame = leaderboard_rows.model_rows_frame(result_records.collect_runs(exp), reference={})
    assert frame["paper_test_acc"].isna().all() and frame["paper_diff"].isna().all()


def test_write_files_and_per_class_rows(exp):
    board = lb.write_leaderboard(exp)
    path = exp / "leaderboard.csv"
    on_disk = pd.read_csv(path)
    assert list(on_disk["model"]) == list(board["model"])
    assert len(on_disk) == 5
    per_class = pd.read_csv(exp / "per_class.csv")
    assert list(per_class.columns) == list(lb.PER_CLASS_COLUMNS)
    assert len(per_class) == 3 * 2 * len(CLASSES)  # completed runs x splits x classes
    row = per_class[(per_class["model"] == "vgg19") & (per_class["split"] == "val")
                    & (per_class["class"] == "basophil")].iloc[0]
    assert row["accuracy"] == pytest.approx(0.8) and row["support"] == 5
    assert (exp / "summary.csv").exists()
    assert not list(exp.glob(".*.tmp"))  # no temp files left behind


def test_summary_mean_std_over_seeds(tmp_path):
    for seed, (v, t) in enumerate([(0, 1), (1, 2), (2, 2)]):
        _write_run(tmp_path, "resnet18", seed, val_wrong=v, test_wrong=t)
    _write_run(tmp_path, "vgg19", 0)
    lb.write_leaderboard(tmp_path)
    board = lb.build_leaderboard(tmp_path)
    summary = pd.read_csv(tmp_path / "summary.csv").set_index("model")
    seeds = board[board["model"] == "resnet18"]
    assert summary.loc["resnet18", "n_seeds"] == 3
    for col in ("val_acc", "test_acc", "test_f1", "ig"):
        values = seeds[col].to_numpy(dtype=float)
        assert summary.loc["resnet18", f"{col}_mean"] == pytest.approx(np.mean(values), abs=1e-6)
        assert summary.loc["resnet18", f"{col}_std"] == pytest.approx(np.std(values, ddof=1), abs=1e-6)
    assert summary.loc["vgg19", "n_seeds"] == 1 and pd.isna(summary.loc["vgg19", "val_acc_std"])


def test_ensemble_rows_come_from_the_ensemble_folders(exp):
    # A row that only exists in leaderboard.csv (no folder behind it) is not carried over: the
    # table is rebuilt from the folders, never from its own previous contents.
    lb.write_leaderboard(exp)
    board = pd.read_csv(exp / "leaderboard.csv")
    orphan = {"kind": "ensemble", "model": "orphan", "status": "completed", "val_acc": 0.99, "test_acc": 0.99}
    runs.write_csv_atomic(exp / "leaderboard.csv", pd.concat([board, pd.DataFrame([orphan])]))
    folder = exp / "ensembles" / "vote2"
    runs.write_json_atomic(folder / "metrics.json", {
        "name": "vote2", "kind": "ensemble", "val": _metric_set(1), "test": _metric_set(0),
        "members": [{"member": "resnet18/seed0"}, {"member": "vgg19/seed0"}], "params_m": 150.0})
    _write_run(exp, "densenet121", 0, val_wrong=4)  # a new run, then a rebuild
    lb.write_leaderboard(exp)
    rebuilt = pd.read_csv(exp / "leaderboard.csv")
    assert list(rebuilt["kind"]) == ["model"] * 6 + ["ensemble"]
    last = rebuilt.iloc[-1]
    assert last["model"] == "vote2" and last["members"] == "resnet18/seed0;vgg19/seed0"
    assert last["test_acc"] == pytest.approx(1.0) and last["val_acc"] == pytest.approx(_metric_set(1)["accuracy"])
    assert last["params_m"] == 150.0
    assert list(rebuilt.columns)[-1] == "members"


def test_tolerates_runs_caught_mid_write(exp, caplog):
    # status says completed but metrics.json is not there yet -> counts as running
    _write_run(exp, "resnet34", 0, with_metrics=False)
    # a status.json that cannot be parsed -> skipped with a warning
    broken = runs.RunDir.for_run(exp, "vgg11", 0)
    broken.root.mkdir(parents=True)
    broken.status.write_text('{"status": "compl')
    with caplog.at_level("WARNING"):
        board = lb.build_leaderboard(exp)
    assert _row(board, "resnet34")["status"] == "running"
    assert pd.isna(_row(board, "resnet34")["rank"])
    assert "vgg11" not in set(board["model"])
    assert any("vgg11" in rec.getMessage() for rec in caplog.records)


def test_format_leaderboard(exp):
    text = lb.format_leaderboard(lb.build_leaderboard(exp))
    lines = text.splitlines()
    assert lines[0].split() == ["rank", "model", "seed", "status", "val_acc", "test_acc",
                                "macro_f1", "params_m", "train_time_s"]
    assert lines[2].split()[:2] == ["1", "resnet18"]
    assert len(lines) == 2 + 5
    short = lb.format_leaderboard(lb.build_leaderboard(exp), max_rows=2)
    assert short.splitlines()[-1] == "... 3 more rows"


def test_cli_writes_and_prints(exp, capsys):
    assert leaderboard_cli.main([str(exp)]) == 0
    out = capsys.readouterr().out
    assert "resnet18" in out and (exp / "leaderboard.csv").exists()


def test_cli_exit_2_without_runs_folder(tmp_path, capsys):
    assert leaderboard_cli.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no runs/ folder" in err and str(tmp_path) in err
    assert not (tmp_path / "leaderboard.csv").exists()


def test_status_json_fields_used_for_identity(tmp_path):
    # A model name with "/" is stored as "timm--x"; status.json carries the real name.
    _write_run(tmp_path, "timm/convnext_tiny", 3)
    board = lb.build_leaderboard(tmp_path)
    assert _row(board, "timm/convnext_tiny", 3)["rank"] == 1
    assert json.loads((tmp_path / "runs/timm--convnext_tiny/seed3/status.json").read_text())["seed"] == 3


def test_the_printed_leaderboard_names_the_runs_with_a_warning(exp):
    board = lb.build_leaderboard(exp)
    assert "with a warning" not in lb.format_leaderboard(board)
    board.loc[board["model"] == "resnet18", "warnings"] = "the model predicts 'a' for 97% of the validation images"
    last = lb.format_leaderboard(board).splitlines()[-1]
    assert last.startswith("1 run(s) with a warning (resnet18/seed0)"), last


@pytest.mark.own_data
def test_leaderboard_ranks_by_the_runs_select_by(tmp_path):
    exp = tmp_path / "exp"
    _write_run(exp, "resnet18", 0, val_wrong=1)
    _write_run(exp, "vgg19", 0, val_wrong=2)
    for model, bal in (("resnet18", 0.6), ("vgg19", 0.9)):
        path = exp / "runs" / model / "seed0" / "metrics.json"
        metrics = json.loads(path.read_text())
        metrics["select_by"] = "val_balanced_acc"
        metrics["val"]["balanced_accuracy"] = bal
        path.write_text(json.dumps(metrics))
    board = lb.build_leaderboard(exp)
    assert board["model"].tolist()[:2] == ["vgg19", "resnet18"] and ranking.ranking_text(board).endswith("balanced accuracy")


# --------------------------------------------------------------------------- 11. a run on a class subset
@pytest.mark.reliability
def test_a_run_on_a_class_subset_is_kept_apart_not_blocking(make_cfg, tmp_path):
    from bench.ensemble import folders as ensemble_runs

    for model in ("simple_cnn", "squeezenet1_1"):
        assert train(make_cfg(f"model={model}", "trainer.epochs=1", "trainer.eval_batch_size=512",
                              "experiment_name=mixed"))["status"] == "completed"
    subset = train(make_cfg("model=mobilenet_v2_050", "trainer.epochs=1", "experiment_name=mixed",
                            "data.classes=[basophil,eosinophil]"))
    assert subset["status"] == "completed"
    exp = tmp_path / "results" / "mixed"
    board = lb.build_leaderboard(exp)
    ranked = board[board["rank"].notna()]
    assert sorted(ranked["model"]) == ["simple_cnn", "squeezenet1_1"]  # never ranked above 8-class runs
    row = board[board["model"] == "mobilenet_v2_050"].iloc[0]
    assert pd.isna(row["rank"]) and "trained on other classes (basophil, eosinophil)" in row["warnings"]
    result = ensemble_runs.run_ensemble(exp, method="majority", k=2)  # the subset run does not block it
    assert sorted(m["model"] for m in result.metrics["members"]) == ["simple_cnn", "squeezenet1_1"]


@pytest.mark.fidelity
def test_another_papers_recipe_is_never_compared_with_gavas_table2(tmp_path):
    from bench.results.rows import _model_row
    from bench.results.records import RunRecord

    m = classification_metrics([0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3, 4, 5, 6, 7], CLASSES)
    record = RunRecord("wbcsnet", 0, "completed", None, {
        "val": m, "test": m, "classes": CLASSES, "protocol_deviations": [], "recipe": "almotairi2019"})
    row = _model_row(record, CLASSES, {"wbcsnet": 0.5})
    assert row["protocol"] == "almotairi2019: paper" and math.isnan(row["paper_test_acc"])
    assert math.isnan(row["paper_diff"])


@pytest.mark.fidelity
def test_a_failed_detector_row_says_detector(tmp_path):
    from bench.results.leaderboard import build_leaderboard

    exp = tmp_path / "exp"
    for model in ("fasterrcnn_mobilenet_v3_large_320_fpn", "resnet18"):
        rd = runs.RunDir.for_run(exp, model, 0)
        rd.root.mkdir(parents=True)
        rd.record_failure(RuntimeError("boom"), "", config_hash="x", model=model, seed=0, error="boom")
    board = build_leaderboard(exp)
    kinds = dict(zip(board["model"], board["kind"]))
    assert kinds == {"fasterrcnn_mobilenet_v3_large_320_fpn": "detector", "resnet18": "model"}


def test_a_detector_run_is_a_leaderboard_row_ranked_by_val_map(detector_run):
    _, rd = detector_run
    board = lb.build_leaderboard(rd.root.parents[2])
    row = board.iloc[0]
    metrics = runs.read_json(rd.metrics)
    assert row["kind"] == "detector" and row["rank"] == 1
    assert row["val_map"] == pytest.approx(metrics["val"]["map"], abs=1e-6)
    assert row["test_count_error"] == pytest.approx(metrics["test"]["count_error"], abs=1e-6)
    assert ranking.rank_key(board) == "val_map"
