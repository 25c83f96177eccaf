"""Published protocols: WBCsNet with k-fold CV (almotairi2019), the two-level classifier with
Monte Carlo CV (cheuque2022_two_level), fold splits, summaries and transfer via model.weights."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from bench import runs
from bench.data.imagefolder import DataError
from bench.config import plans
from bench.data.split import make_manifest, manifest_filename
from bench.models import PretrainedWeightsUnavailable, create_model
from bench.models.weights import load_local_weights
from bench.protocols import cv
from bench.cli.cv import main
from bench.protocols.cv import CV_FOLDS_CSV, CV_SUMMARY_CSV, run_cv
from bench.training import run_training as train

from tests.helpers import SMOKE_OVERRIDES, compose_cfg

GROUPED = ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]  # the default groups, dataset order
FAST = ["trainer.epochs=1", "trainer.max_batches=1", "trainer.batch_size=16", "data.image_size=16"]  # simple_cnn: 16 px ok


def _smoke(tmp_path, cache_dir, *overrides):
    return [*SMOKE_OVERRIDES, "data=synthetic", f"paths.results_dir={tmp_path / 'results'}",
            f"paths.cache_dir={cache_dir}", *FAST, *overrides]


def _assert_summary_is_mean_and_std(folds: pd.DataFrame, summary: pd.DataFrame, model: str, n: int):
    rows = folds[(folds["model"] == model) & (folds["status"] == "completed")]
    assert len(rows) == n
    line = summary[summary["model"] == model].iloc[0]
    assert line["n_folds"] == n
    metrics = cv.metric_columns(folds)
    assert {"test_acc", "val_acc", "test_f1", "test_precision", "test_sensitivity"} <= set(metrics)
    for col in metrics:
        values = pd.to_numeric(rows[col], errors="coerce").to_numpy(dtype=float)
        if np.isnan(values).all():
            continue
        np.testing.assert_allclose(line[f"{col}_mean"], np.mean(values), rtol=1e-9, atol=1e-12, err_msg=col)
        np.testing.assert_allclose(line[f"{col}_std"], np.std(values, ddof=1), rtol=1e-9, atol=1e-12, err_msg=col)


# --------------------------------------------------------------------------- configuration and models
def test_both_experiments_compose_with_the_published_settings():
    wbc = compose_cfg("experiment=almotairi2019", "data.root=/data")
    assert (wbc.model.name, wbc.model.pretrained, wbc.optim._target_) == ("wbcsnet", False, "torch.optim.SGD")
    assert wbc.optim.lr == 1e-3 and wbc.trainer.batch_size == 32 and wbc.trainer.epochs == 40
    assert wbc.cv.folds == 10 and not wbc.cv.repeats and not wbc.two_level.enabled
    assert list(wbc.data.classes) == ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    two = compose_cfg("experiment=cheuque2022_two_level", "data.root=/data")
    assert (two.model.name, two.data.image_size, two.optim._target_) == ("mobilenet_v1_050", 128, "torch.optim.Adam")
    assert two.optim.lr == 1e-3 and two.cv.repeats == 10 and two.cv.test_fraction == 0.3 and not two.cv.folds
    assert two.two_level.enabled and dict(two.two_level.groups) == {
        "mononuclear": ["lymphocyte", "monocyte"], "polymorphonuclear": ["neutrophil", "eosinophil"]}
    # The default holdout protocol is untouched.
    base = compose_cfg()
    assert base.data.split_mode == "holdout" and base.data.classes is None and not base.two_level.enabled


def test_wbcsnet_builds_and_trains_at_32px():
    torch.manual_seed(0)
    model = create_model("wbcsnet", num_classes=8)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(64, (5, 5))] * 3 + [(256, (5, 5)), (512, (3, 3))]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 5
    assert model.fc1.out_features == 512 and model.fc.out_features == 8
    out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 8)
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 7])).backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(PretrainedWeightsUnavailable):
        create_model("wbcsnet", num_classes=8, pretrained=True)
    mobile = create_model("mobilenet_v2_050", num_classes=3)
    assert mobile(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    with pytest.raises(PretrainedWeightsUnavailable, match="width 0.5"):
        create_model("mobilenet_v2_050", num_classes=3, pretrained=True)


# --------------------------------------------------------------------------- splits
def _table(counts: dict[str, int]) -> pd.DataFrame:
    rows = [(f"{c}/{i:03d}.png", f"{c}{i:04d}", c) for c, n in counts.items() for i in range(n)]
    return pd.DataFrame(rows, columns=["path", "sha1", "label"])


def test_kfold_folds_are_disjoint_stratified_and_cover_the_data():
    table = _table({"a": 20, "b": 11, "c": 7})
    table.loc[table.path == "a/001.png", "sha1"] = "a0000"  # a copy of a/000: must share its fold
    manifests = [make_manifest(table, seed=5, fractions=[0.8, 0.1, 0.1], split_mode="kfold", n_folds=3, fold=i)
                 for i in range(3)]
    tests = [set(m.loc[m.split == "test", "path"]) for m in manifests]
    assert set().union(*tests) == set(table.path) and sum(map(len, tests)) == len(table)
    sizes = [len(t) for t in tests]
    assert max(sizes) - min(sizes) <= 1 + 1  # balanced (+1: the duplicate pair moves together)
    for m in manifests:
        by = m.groupby(["label", "split"]).size().unstack(fill_value=0)
        assert (by["train"] > 0).all() and (by["val"] > 0).all() and (by["test"] >= 2).all()
        assert m.set_index("path").loc["a/000.png", "split"] == m.set_index("path").loc["a/001.png", "split"]
    again = make_manifest(table.sample(frac=1, random_state=1), seed=5, fractions=[0.8, 0.1, 0.1],
                          split_mode="kfold", n_folds=3, fold=1)
    assert again.equals(manifests[1])  # deterministic, independent of file order
    assert manifest_filename("kfold", n_folds=10, fold=3) == "manifest-kfold10-fold03.csv"
    assert manifest_filename("montecarlo", fold=2, fractions=[0.56, 0.14, 0.3]) == "manifest-mc30-rep02.csv"
    assert manifest_filename() == "manifest.csv"
    with pytest.raises(DataError, match="too small"):
        make_manifest(_table({"a": 20, "b": 2}), seed=0, fractions=[0.8, 0.1, 0.1], split_mode="kfold",
                      n_folds=3, fold=0)


def test_montecarlo_repetitions_are_stratified_70_30_and_differ():
    table = _table({"a": 40, "b": 20})
    reps = [make_manifest(table, seed=0, fractions=plans.montecarlo_fractions([0.8, 0.2, 0.1], 0.3),
                          split_mode="montecarlo", fold=r) for r in range(2)]
    for m in reps:
        assert m.groupby("label")["split"].apply(lambda s: (s == "test").sum()).to_dict() == {"a": 12, "b": 6}
    assert set(reps[0].loc[reps[0].split == "test", "path"]) != set(reps[1].loc[reps[1].split == "test", "path"])
    assert plans.montecarlo_fractions([0.8, 0.2, 0.1], 0.3) == [0.56, 0.14, 0.3]


# --------------------------------------------------------------------------- k-fold, end to end
def test_kfold_cv_runs_every_fold_and_summarises_them(tmp_path, cache_dir):
    # All eight synthetic classes (the experiment keeps the paper's five white-cell ones).
    code = main(_smoke(tmp_path, cache_dir, "experiment=almotairi2019", "cv.folds=3", "data.classes=null"))
    assert code == 0
    exp = tmp_path / "results" / "almotairi2019"
    folds, summary = pd.read_csv(exp / CV_FOLDS_CSV), pd.read_csv(exp / CV_SUMMARY_CSV)
    assert folds["fold"].tolist() == [0, 1, 2] and set(folds["cv"]) == {"kfold3"}
    assert {f"test_{k}_{c}" for k in ("precision", "sensitivity", "f1") for c in ("ig", "platelet")} <= set(folds)
    _assert_summary_is_mean_and_std(folds, summary, "simple_cnn", 3)

    tests = []
    for i in range(3):
        fold_dir = exp / "kfold3" / f"fold{i:02d}"
        manifest = pd.read_csv(fold_dir / f"manifest-kfold3-fold{i:02d}.csv")
        test = set(manifest.loc[manifest.split == "test", "path"])
        run_dir = runs.RunDir.for_run(fold_dir, "simple_cnn", 0)
        assert set(pd.read_csv(run_dir.predictions("test"))["path"]) == test  # evaluated on its own fold
        assert runs.read_json(run_dir.metrics)["test"]["n"] == len(test)
        assert (fold_dir / "leaderboard.csv").exists()
        tests.append(test)
    assert set().union(*tests) == set(manifest["path"]) and sum(map(len, tests)) == len(manifest) == 240
    assert not (exp / "manifest.csv").exists()  # the holdout manifest is never touched

    # A second invocation reuses the finished folds (same config) and reproduces the tables.
    before = runs.RunDir.for_run(exp / "kfold3" / "fold01", "simple_cnn", 0).metrics.stat().st_mtime_ns
    assert main(_smoke(tmp_path, cache_dir, "experiment=almotairi2019", "cv.folds=3", "cv.fold=1",
                       "data.classes=null")) == 0
    assert runs.RunDir.for_run(exp / "kfold3" / "fold01", "simple_cnn", 0).metrics.stat().st_mtime_ns == before
    assert pd.read_csv(exp / CV_FOLDS_CSV).equals(folds)


def test_bench_cv_without_a_scheme_is_a_clear_error(tmp_path, cache_dir, capsys):
    assert main(_smoke(tmp_path, cache_dir)) == 2
    assert "cv.folds" in capsys.readouterr().err


# --------------------------------------------------------------------------- two-level, end to end
def test_two_level_montecarlo_reports_the_composed_classifier(tmp_path, cache_dir):
    cfg = compose_cfg(*_smoke(tmp_path, cache_dir, "experiment=cheuque2022_two_level", "cv.repeats=2"))
    out = run_cv(cfg)
    assert [r["status"] for r in out["results"]] == ["completed", "completed"]
    exp = tmp_path / "results" / "cheuque2022_two_level"
    folds, summary = pd.read_csv(exp / CV_FOLDS_CSV), pd.read_csv(exp / CV_SUMMARY_CSV)
    assert folds["model"].unique().tolist() == ["two_level/simple_cnn"] and folds["fold"].tolist() == [0, 1]
    _assert_summary_is_mean_and_std(folds, summary, "two_level/simple_cnn", 2)
    assert (folds["n_excluded"] == 120).all()  # 4 of the 8 synthetic classes are outside the groups

    tests = []
    for rep in ("rep00", "rep01"):
        rep_dir = exp / "mc30" / rep
        rd = runs.RunDir.for_run(rep_dir, "two_level/simple_cnn", 0)
        metrics = runs.read_json(rd.metrics)
        assert metrics["classes"] == GROUPED and list(metrics["test"]["per_class"]) == GROUPED
        assert metrics["n_excluded"] == 120
        assert metrics["excluded_by_class"] == {c: 30 for c in ("basophil", "erythroblast", "ig", "platelet")}
        pred = pd.read_csv(rd.predictions("test"))
        assert set(pred["label"]) == set(GROUPED) and set(pred["predicted"]) <= set(GROUPED)
        assert [c for c in pred.columns if c.startswith("prob_")] == [f"prob_{c}" for c in GROUPED]
        np.testing.assert_allclose(pred[[f"prob_{c}" for c in GROUPED]].sum(axis=1), 1.0, atol=1e-4)
        assert (pred["label"].value_counts() == 9).all()  # 30% of 30 images per class
        # The levels are ordinary runs, kept, on the same held-out images.
        level1 = runs.RunDir.for_run(rep_dir / "levels" / "level1", "simple_cnn", 0)
        assert runs.read_json(level1.metrics)["classes"] == ["polymorphonuclear", "mononuclear"]
        assert set(pd.read_csv(level1.predictions("test"))["path"]) == set(pred["path"])
        for group, members in (("mononuclear", ["lymphocyte", "monocyte"]),
                               ("polymorphonuclear", ["eosinophil", "neutrophil"])):
            level2 = runs.RunDir.for_run(rep_dir / "levels" / f"level2-{group}", "simple_cnn", 0)
            assert runs.read_json(level2.metrics)["classes"] == members
            assert set(pd.read_csv(level2.predictions("test"))["path"]) == set(
                pred.loc[pred["label"].isin(members), "path"])
        # Composed metrics are the cascade's: recomputed from its predictions.
        y = pred["label"].map(GROUPED.index)
        assert metrics["test"]["accuracy"] == pytest.approx((pred["predicted"].map(GROUPED.index) == y).mean())
        board = pd.read_csv(rep_dir / "leaderboard.csv")
        assert board["model"].tolist() == ["two_level/simple_cnn"]
        tests.append(set(pred["path"]))
    assert tests[0] != tests[1]  # each repetition draws its own split


def test_groups_are_configuration_and_checked(tmp_path, cache_dir):
    from bench.config.plans import level_configs, validate_groups

    cfg = compose_cfg(*_smoke(tmp_path, cache_dir, "experiment=cheuque2022_two_level", "cv.repeats=2",
                              "~two_level.groups.polymorphonuclear", "+two_level.groups.granulocyte=[eosinophil,"
                              "neutrophil,basophil]", "+two_level.groups.platelets=[platelet]"))
    level1, level2 = level_configs(cfg)
    assert dict(level1.data.class_map)["basophil"] == "granulocyte" and "platelet" in level1.data.classes
    assert sorted(level2) == ["granulocyte", "mononuclear"]  # a one-class group needs no level-2 model
    with pytest.raises(ValueError, match="two groups"):
        validate_groups({"a": ["x", "y"], "b": ["y"]})
    with pytest.raises(ValueError, match="at least two groups"):
        validate_groups({"a": ["x", "y"]})


# --------------------------------------------------------------------------- transfer
def test_transfer_from_a_wbcsnet_checkpoint_to_fewer_classes(tmp_path, cache_dir):
    torch.manual_seed(0)
    source = create_model("wbcsnet", num_classes=8)
    ckpt = tmp_path / "wbcsnet_8.pt"
    torch.save({"model": source.state_dict(), "model_name": "wbcsnet"}, ckpt)

    target = create_model("wbcsnet", num_classes=3)
    report = load_local_weights(target, ckpt)
    assert set(report["skipped"]) == {"fc.weight", "fc.bias"} and not report["unexpected"]
    for key, value in target.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(value, source.state_dict()[key]), key

    # End to end: fine-tune on a 3-class dataset (a subset of the synthetic classes) from it.
    cfg = compose_cfg(*_smoke(tmp_path, cache_dir, "model=wbcsnet", f"model.weights={ckpt}",
                              "data.classes=[lymphocyte,monocyte,neutrophil]", "data.image_size=32",
                              "experiment_name=transfer"))
    out = train(cfg)
    assert out["status"] == "completed", out.get("error")
    metrics = json.loads((runs.RunDir.for_run(tmp_path / "results" / "transfer", "wbcsnet", 0).metrics).read_text())
    assert metrics["classes"] == ["lymphocyte", "monocyte", "neutrophil"] and metrics["n_excluded"] == 150
