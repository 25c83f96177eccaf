"""Guard rails for a user's own data: imbalanced classes, other labs' folders, bad values.

Expected values are worked out here by hand or with scikit-learn / torchvision, never read
from the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bench.results import leaderboard as lb
from bench.results import ranking
from bench import runs
from bench.training import classifier as train_mod
from bench.config.checks import validate_config
from bench.metrics import balanced_accuracy, classification_metrics, collapse_warning, confidence_threshold
from bench.cli.train import cli
from bench.config import run_identity
from bench.training import run_training as train

from .conftest import compose_cfg


def _folder(root: Path, counts: dict[str, int], size: int = 24, seed: int = 0) -> Path:
    """One folder per class, each class a different flat colour plus noise (easy to learn)."""
    rng = np.random.default_rng(seed)
    for k, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            base = np.array([(60 * k) % 256, (120 + 50 * k) % 256, (200 - 40 * k) % 256], dtype=float)
            img = np.clip(base + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{name}_{i:03d}.png")
    return root


# --------------------------------------------------------------------------- numbers
def test_balanced_accuracy_by_hand():
    # Recall per class 2/4, 2/3, 2/3 (the confusion matrix of test_known_answers): mean 11/18.
    y_true = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    y_pred = [0, 0, 1, 2, 1, 1, 0, 2, 2, 1]
    assert balanced_accuracy(y_true, y_pred) == pytest.approx(11 / 18)
    assert classification_metrics(y_true, y_pred, ["a", "b", "c"])["balanced_accuracy"] == pytest.approx(11 / 18)
    # Majority-class-only predictions: 59 % accuracy, 50 % balanced accuracy on two classes.
    y = [0] * 59 + [1] * 41
    assert balanced_accuracy(y, [0] * 100) == pytest.approx(0.5)


def test_a_run_predicting_one_class_is_named():
    names = ["lymphocyte", "neutrophil", "platelet"]
    y_true = [1] * 59 + [0] * 30 + [2] * 11
    text = collapse_warning(y_true, [1] * 100, names)
    assert "'neutrophil'" in text and "100%" in text and "59%" in text and "class_weights=balanced" in text
    assert collapse_warning(y_true, y_true, names) is None  # a good model
    assert collapse_warning([1] * 95 + [0] * 5, [1] * 100, names) is None  # the truth is (almost) one class


def test_low_confidence_threshold_is_a_quantile_of_correct_validation_predictions():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.7, 0.3], [0.45, 0.55]])
    labels = np.array([0, 0, 1, 1, 1])  # correct: rows 0, 1, 2, 4 with top 0.9, 0.6, 0.8, 0.55
    got = confidence_threshold(probs.max(1), probs.argmax(1) == labels, quantile=0.5)
    assert got["value"] == pytest.approx(np.median([0.9, 0.6, 0.8, 0.55])) and got["n_correct"] == 4


def test_balanced_class_weights_are_sklearns():
    from sklearn.utils.class_weight import compute_class_weight

    from bench.training.engine import loss_class_weights

    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    got = loss_class_weights("balanced", labels, 3)
    # n / (C * n_c): 6 / (3*3), 6 / (3*1), 6 / (3*2)
    assert got.tolist() == pytest.approx([2 / 3, 2.0, 1.0])
    assert got.tolist() == pytest.approx(compute_class_weight("balanced", classes=np.arange(3), y=labels.numpy()))
    assert loss_class_weights(None, labels, 3) is None


def test_balanced_sampler_draws_every_class_about_equally():
    from bench.data.loader import BatchLoader, sampler_weights
    from bench.data.store import SplitData
    from bench.data.transforms import Normalize

    labels = torch.tensor([0] * 90 + [1] * 10)
    split = SplitData(torch.zeros(100, 3, 4, 4, dtype=torch.uint8), labels, [str(i) for i in range(100)])
    loader = BatchLoader(split, 25, normalize=Normalize([0, 0, 0], [1, 1, 1]), device=torch.device("cpu"),
                         shuffle=True, seed=0, sample_weights=sampler_weights("balanced", labels, 2))
    drawn = torch.cat([y for _, y in loader])
    assert len(drawn) == 100  # an epoch is still one pass worth of images
    assert 0.35 < drawn.float().mean() < 0.65  # the 10 % class is half the draws (seeded: deterministic)
    plain = BatchLoader(split, 25, normalize=Normalize([0, 0, 0], [1, 1, 1]), device=torch.device("cpu"),
                        shuffle=True, seed=0)
    assert sorted(torch.cat([y for _, y in plain]).tolist()) == sorted(labels.tolist())


# --------------------------------------------------------------------------- colour jitter
@pytest.mark.parametrize("op, factor", [("brightness", 1.3), ("contrast", 0.6), ("saturation", 1.7), ("hue", 0.12),
                                        ("hue", -0.3)])
def test_colour_jitter_matches_torchvision(op, factor):
    from torchvision.transforms.v2 import functional as tvf

    from bench.data.transforms import color_jitter

    torch.manual_seed(0)
    x = torch.rand(3, 3, 9, 11)
    factors = torch.tensor([factor, 1.0 if op != "hue" else 0.0, factor / 2 if op != "hue" else factor / 3])
    got = color_jitter(x, **{op: factors})
    adjust = getattr(tvf, f"adjust_{op}")
    expected = torch.stack([adjust(x[i], float(f)) for i, f in enumerate(factors)])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_colour_jitter_in_the_loader_scale_and_off_by_default():
    from bench.data.transforms import BatchAugment

    off = BatchAugment(hflip=False, vflip=False, rotation=0.0)
    x = torch.randint(0, 256, (4, 3, 8, 8)).float()
    assert torch.equal(off(x, torch.Generator().manual_seed(0)), x)
    # With jitter the same generator still draws the same flips and angles first.
    geometric, on = BatchAugment(rotation=30.0), BatchAugment(rotation=30.0, brightness=0.4, hue=0.1)
    a, b = geometric.sample(6, torch.Generator().manual_seed(1)), on.sample(6, torch.Generator().manual_seed(1))
    assert all(torch.equal(a[k], b[k]) for k in ("hflip", "vflip", "angle"))
    assert ((b["brightness"] >= 0.6) & (b["brightness"] <= 1.4)).all() and (b["hue"].abs() <= 0.1).all()
    y = on(x, torch.Generator().manual_seed(2))
    assert y.min() >= 0 and y.max() <= 255 and not torch.equal(y, x)


# --------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("override, named", [
    ("data.image_size=0", "data.image_size=0"),
    ("data.image_size=100000", "data.image_size=100000"),
    ("trainer.batch_size=0", "trainer.batch_size=0"),
    ("optim.lr=abc", "optim.lr='abc'"),
    ("optim.lr=-0.1", "optim.lr=-0.1"),
    ("trainer.select_by=val_f1", "trainer.select_by='val_f1'"),
    ("trainer.sampler=uniform", "trainer.sampler='uniform'"),
    ("data.augment.hue=0.7", "data.augment.hue=0.7"),
    ("trainer.grad_accum=64", "trainer.grad_accum=64"),
    ("data.split_fractions=[0.5,0.5]", "data.split_fractions=[0.5, 0.5]"),
])
def test_bad_values_are_named_with_what_is_valid(override, named):
    problems = validate_config(compose_cfg(override, "data.root=/data"))
    assert len(problems) == 1 and problems[0].startswith(named), problems


def test_the_defaults_and_every_experiment_are_valid():
    assert validate_config(compose_cfg()) == []
    for experiment in ("gavas2021", "quickstart", "almotairi2019", "acevedo2019_finetune"):
        assert validate_config(compose_cfg(f"experiment={experiment}", "data.root=/data")) == [], experiment


def test_the_cli_lists_bad_values_before_training(tmp_path, capsys):
    code = cli(["model=simple_cnn", "model.pretrained=false", "optim.lr=abc", "trainer.batch_size=0",
                f"paths.results_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and "optim.lr='abc'" in err and "trainer.batch_size=0" in err and "nothing was trained" in err
    assert not any(tmp_path.iterdir())


def test_an_unknown_experiment_lists_the_experiments(capsys):
    assert cli(["experiment=nonexist"]) == 2
    err = capsys.readouterr().err
    assert "experiment='nonexist' is not one of the experiment options" in err and "gavas2021" in err


def test_new_options_at_their_neutral_value_keep_old_run_identities():
    # A run written before select_by / class_weights / sampler / colour jitter existed has a
    # config without them; at the values that do what the old code did, the hash is unchanged.
    cfg = compose_cfg()
    container, chash = run_identity(cfg)
    old = json.loads(json.dumps(container))
    for key in ("select_by", "class_weights", "sampler"):
        del old["trainer"][key]
    for key in ("brightness", "contrast", "saturation", "hue"):
        del old["data"]["augment"][key]
    from omegaconf import OmegaConf

    assert run_identity(OmegaConf.create(old))[1] == chash
    assert run_identity(compose_cfg("trainer.select_by=val_balanced_acc"))[1] != chash
    assert run_identity(compose_cfg("data.augment.hue=0.05"))[1] != chash


def test_a_schedule_whose_code_moved_keeps_the_identity_it_was_first_hashed_with():
    # The Keras decay schedule moved from bench.schedules to bench.training.schedules (issue 26): a run
    # hashed with the old _target_ must keep its hash, or every finished scratch_vs_pretrained run retrains.
    from omegaconf import OmegaConf

    cfg = compose_cfg("sched=inverse_time")
    assert cfg.sched._target_ == "bench.training.schedules.inverse_time"
    old = OmegaConf.to_container(cfg, resolve=True)
    old["sched"]["_target_"] = "bench.schedules.inverse_time"
    assert run_identity(OmegaConf.create(old))[1] == run_identity(cfg)[1]
    assert run_identity(compose_cfg("sched=inverse_time", "sched.decay=0.5"))[1] != run_identity(cfg)[1]


@pytest.mark.parametrize("override", ["trainer.progress=false", "trainer.num_threads=1", "trainer.checkpoint_every_s=5",
                                      "data.store=mmap", "data.decode_workers=3", "paths.results_dir=/elsewhere",
                                      "logger=csv", "svm.n_jobs=2", "cv.folds=5", "two_level.enabled=true"])
def test_keys_that_never_change_results_stay_out_of_every_identity(override):
    from bench.protocols import svm_features

    assert run_identity(compose_cfg(override))[1] == run_identity(compose_cfg())[1]
    # The SVM protocol reads the data keys by the same rule (it hashed data.store before).
    svm = ("experiment=acevedo2019_svm", "data.root=/d")
    assert svm_features.identity(compose_cfg(*svm, override), "vgg16", "rbf") == svm_features.identity(
        compose_cfg(*svm), "vgg16", "rbf")


@pytest.mark.parametrize("override", ["trainer.balance_to=100", "model.head_keep_fc=1", "model.trainable_conv_blocks=2",
                                      "model.weights_tag=IMAGENET1K_V1", "trainer.epochs=3", "data.split_seed=1"])
def test_keys_that_change_results_change_every_identity(override):
    from bench.protocols import svm_features

    assert run_identity(compose_cfg(override))[1] != run_identity(compose_cfg())[1]
    if override.startswith(("model.weights_tag", "data.")):  # what an SVM run reads
        svm = ("experiment=acevedo2019_svm", "data.root=/d")
        assert svm_features.identity(compose_cfg(*svm, override), "vgg16", "rbf") != svm_features.identity(
            compose_cfg(*svm), "vgg16", "rbf")


# --------------------------------------------------------------------------- runs on imbalanced data
def test_select_by_balanced_accuracy_picks_another_epoch(make_cfg, monkeypatch):
    # Validation: 3 images of class 0, 1 of class 1. Epoch 1 predicts class 0 everywhere
    # (accuracy 3/4, balanced 1/2); epoch 2 gets one class-0 image wrong and the class-1 one
    # right (accuracy 3/4, balanced (2/3 + 1)/2 = 5/6); epoch 3 predicts class 1 everywhere.
    labels = np.array([0, 0, 0, 1])
    preds = [np.array([0, 0, 0, 0]), np.array([1, 0, 0, 1]), np.array([1, 1, 1, 1])]
    calls = []

    def scripted(model, batches, criterion, **kw):
        calls.append(1)
        if len(calls) > len(preds):
            return real(model, batches, criterion, **kw)
        p = preds[len(calls) - 1]
        probs = np.eye(8)[p]
        return {"loss": 1.0, "acc": float((p == labels).mean()), "n": 4, "labels": labels, "preds": p,
                "probs": probs, "seconds": 0.1, "img_s": 40.0}

    real = train_mod.evaluate
    monkeypatch.setattr(train_mod, "evaluate", scripted)
    by_acc = train(make_cfg("trainer.epochs=3", "experiment_name=acc"))
    calls.clear()
    by_bal = train(make_cfg("trainer.epochs=3", "trainer.select_by=val_balanced_acc", "experiment_name=bal"))
    m_acc = runs.read_json(Path(by_acc["run_dir"]) / "metrics.json")
    m_bal = runs.read_json(Path(by_bal["run_dir"]) / "metrics.json")
    assert m_acc["best_epoch"] == 1 and m_acc["select_by"] == "val_acc"  # the tie keeps the earlier epoch
    assert m_bal["best_epoch"] == 2 and m_bal["select_by"] == "val_balanced_acc"
    history = pd.read_csv(Path(by_bal["run_dir"]) / "history.csv")
    assert history["val_balanced_acc"].tolist() == pytest.approx([0.5, 5 / 6, 0.5])
    # Epoch 1 of the accuracy run predicted one class only: the run says so, by name.
    assert any("predicts 'basophil' for 100%" in w for w in m_acc["warnings"])
    board = lb.build_leaderboard(Path(by_acc["run_dir"]).parents[2])
    assert "predicts 'basophil'" in board.loc[0, "warnings"]


def test_class_weights_and_the_balanced_sampler_train(make_cfg):
    plain = train(make_cfg("trainer.epochs=1", "experiment_name=plain"))
    weighted = train(make_cfg("trainer.epochs=1", "trainer.class_weights=balanced", "trainer.sampler=balanced",
                              "data.augment.brightness=0.2", "data.augment.hue=0.05", "experiment_name=weighted"))
    assert plain["status"] == weighted["status"] == "completed", weighted.get("error")
    a = torch.load(Path(plain["run_dir"]) / "best.pt", weights_only=True)["model"]
    b = torch.load(Path(weighted["run_dir"]) / "best.pt", weights_only=True)["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_leaderboard_ranks_by_the_runs_select_by(tmp_path):
    from .test_leaderboard import _write_run

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


def _imbalanced_run(tmp_path, cache_dir, counts, *extra):
    root = _folder(tmp_path / "lab2", counts)
    return root, compose_cfg("trainer=cpu_smoke", "model=simple_cnn", "model.pretrained=false", "data=imagefolder",
                             f"data.root={root}", "data.image_size=16", "trainer.epochs=2", "data.decode_workers=1",
                             f"paths.results_dir={tmp_path / 'results'}", f"paths.cache_dir={cache_dir}", *extra)


def test_another_labs_classes_get_no_published_comparison(tmp_path, cache_dir):
    from bench import report

    _, cfg = _imbalanced_run(tmp_path, cache_dir, {"Lymphocyte": 14, "Neutrophil": 30, "Platelet": 12})
    out = train(cfg)
    assert out["status"] == "completed"
    exp = Path(out["run_dir"]).parents[2]
    board = pd.read_csv(exp / "leaderboard.csv")
    assert board["paper_test_acc"].isna().all() and board["paper_diff"].isna().all()
    text = report.build_report(exp, tmp_path / "report").read_text()
    assert "Published class-wise accuracy" not in text and "ours − paper" not in text
    assert "published (Gavas" not in text
    assert "none is shown next to these" in text
    support = runs.read_json(Path(out["run_dir"]) / "metrics.json")["test"]["per_class"]
    for name, scores in support.items():
        assert f"{name} (n={scores['support']})" in text  # per-class n beside per-class numbers


def test_all_zero_columns_are_not_bold():
    from bench.report.markdown import md_table

    table = md_table(pd.DataFrame({"model": ["a", "b"], "x": ["0.00", "0.00"], "y": ["1.00", "2.00"]}),
                     bold=["x", "y"])
    assert "**0.00**" not in table and "**2.00**" in table


# --------------------------------------------------------------------------- the preflight on a new folder
def test_preflight_prints_class_counts_and_names_small_and_empty_classes(tmp_path):
    from bench.preflight import plan_runs, preflight

    root = _folder(tmp_path / "lab", {"basophil": 4, "eosinophil": 2, "neutrophil": 40})
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


def test_a_class_whose_files_all_fail_to_decode_is_left_out_and_named(tmp_path, cache_dir):
    root = tmp_path / "lab"
    _folder(root, {"a": 12, "b": 12})
    (root / "ghost").mkdir()
    for i in range(3):
        (root / "ghost" / f"g{i}.jpg").write_bytes(b"not a jpeg at all")
    (root / "empty").mkdir()
    cfg = compose_cfg("trainer=cpu_smoke", "model=simple_cnn", "model.pretrained=false", "data=imagefolder",
                      f"data.root={root}", "data.image_size=16", "trainer.epochs=1", "data.decode_workers=1",
                      f"paths.results_dir={tmp_path / 'results'}", f"paths.cache_dir={cache_dir}")
    out = train(cfg)
    assert out["status"] == "completed"
    metrics = runs.read_json(Path(out["run_dir"]) / "metrics.json")
    assert metrics["classes"] == ["a", "b"]  # no phantom third output
    assert any("class 'ghost': none of its 3 file(s) could be decoded" in w for w in metrics["warnings"])
    assert any("'empty'" in w for w in metrics["warnings"])


def test_another_dataset_under_the_same_experiment_stops_the_preflight_before_anything_moves(tmp_path, cache_dir):
    from bench.preflight import plan_runs, preflight

    first = _folder(tmp_path / "lab1", {"a": 10, "b": 10})
    second = _folder(tmp_path / "lab2", {"a": 11, "c": 10}, seed=3)
    common = ["model=simple_cnn", "model.pretrained=false", "trainer=cpu_smoke", "data=imagefolder",
              "data.image_size=16", "trainer.epochs=1", "data.decode_workers=1", "experiment_name=shared",
              f"paths.results_dir={tmp_path / 'results'}", f"paths.cache_dir={cache_dir}"]
    assert train(compose_cfg(*common, f"data.root={first}"))["status"] == "completed"
    report = preflight(plan_runs([*common, f"data.root={second}"]))
    assert any("does not match the split of experiment 'shared'" in p and "Nothing was moved" in p
               for p in report.problems)
    # A changed split setting with the same data is named too.
    report = preflight(plan_runs([*common, f"data.root={first}", "data.split_seed=7"]))
    assert any("data.split_seed=7 (the split was made with 42)" in p for p in report.problems)
    assert preflight(plan_runs([*common, f"data.root={first}"])).ok
    run_dir = tmp_path / "results" / "shared" / "runs" / "simple_cnn" / "seed0"
    assert (run_dir / "metrics.json").exists() and not (run_dir.parent / "replaced").exists()


def test_a_changed_split_seed_fails_the_run_instead_of_reusing_the_split(make_cfg):
    assert train(make_cfg("trainer.epochs=1", "experiment_name=seeded"))["status"] == "completed"
    out = train(make_cfg("trainer.epochs=1", "experiment_name=seeded", "data.split_seed=7", "model=squeezenet1_1",
                         "trainer.eval_batch_size=512"))
    assert out["status"] == "failed" and "data.split_seed=7 (the split was made with 42)" in out["error"]


def _split_table(n_per_class: int = 20) -> pd.DataFrame:
    rows = [(f"{c}/{i}.png", f"{c}-{i}", c) for c in ("a", "b") for i in range(n_per_class)]
    return pd.DataFrame(rows, columns=["path", "sha1", "label"])


def test_a_changed_split_rounding_or_fractions_is_named_not_reused(tmp_path):
    from bench.data.imagefolder import DataError
    from bench.data.split import load_or_create_manifest

    path, table = tmp_path / "manifest.csv", _split_table()
    load_or_create_manifest(path, table, seed=0, fractions=[0.64, 0.24, 0.12], rounding="ceil")
    with pytest.raises(DataError, match=r"data\.split_rounding=round \(the split was made with ceil\)"):
        load_or_create_manifest(path, table, seed=0, fractions=[0.64, 0.24, 0.12], rounding="round")
    with pytest.raises(DataError, match=r"data\.split_fractions=\[0\.5, 0\.25, 0\.25\] \(the split was made "
                                        r"with \[0\.64, 0\.24, 0\.12\]\)"):
        load_or_create_manifest(path, table, seed=0, fractions=[0.5, 0.25, 0.25], rounding="ceil")
    load_or_create_manifest(path, table, seed=0, fractions=[0.64, 0.24, 0.12], rounding="ceil")  # the same: fine


def test_a_manifest_recorded_before_split_rounding_was_always_recorded_means_round(tmp_path):
    from bench.data.imagefolder import DataError
    from bench.data.split import load_or_create_manifest

    path, table = tmp_path / "manifest.csv", _split_table()
    load_or_create_manifest(path, table, seed=0, fractions=[0.64, 0.24, 0.12])
    # What an older bench wrote beside a split made with the default rounding: no split_rounding key.
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"data.split_seed": 0, "data.split_fractions": [0.64, 0.24, 0.12], "data.split_mode": "holdout"}))
    load_or_create_manifest(path, table, seed=0, fractions=[0.64, 0.24, 0.12], rounding="round")
    with pytest.raises(DataError, match=r"data\.split_rounding=ceil \(the split was made with round\)"):
        load_or_create_manifest(path, table, seed=0, fractions=[0.64, 0.24, 0.12], rounding="ceil")


def test_a_changed_split_rounding_stops_the_run_and_the_preflight(make_cfg, tmp_path):
    from bench.data.split import load_or_create_manifest
    from bench.preflight import plan_runs, preflight

    assert train(make_cfg("trainer.epochs=1", "experiment_name=ceiled",
                          "data.split_rounding=ceil"))["status"] == "completed"
    out = train(make_cfg("trainer.epochs=1", "experiment_name=ceiled", "model=squeezenet1_1"))
    assert out["status"] == "failed" and "data.split_rounding=round (the split was made with ceil)" in out["error"]
    lab = _folder(tmp_path / "lab", {"a": 10, "b": 10})
    common = ["model=simple_cnn", "model.pretrained=false", "data=imagefolder", f"data.root={lab}",
              "experiment_name=labsplit", f"paths.results_dir={tmp_path / 'results'}"]
    # The experiment's split, made with ceil (the preflight reads paths and labels, not the hashes).
    table = pd.DataFrame({"path": [f"{c}/{c}_{i:03d}.png" for c in "ab" for i in range(10)],
                          "label": [c for c in "ab" for _ in range(10)]})
    table["sha1"] = table["path"]
    load_or_create_manifest(tmp_path / "results" / "labsplit" / "manifest.csv", table, seed=42,
                            fractions=[0.64, 0.24, 0.12], rounding="ceil")
    report = preflight(plan_runs(common))
    assert any("data.split_rounding=round (the split was made with ceil)" in p for p in report.problems), \
        report.format()
    assert not any("split was made" in p for p in preflight(plan_runs([*common, "data.split_rounding=ceil"])).problems)


@pytest.mark.parametrize("sweep, name_override", [
    ("data.split_rounding=round,ceil", None),
    ("data.split_fractions=[0.64,0.24,0.12],[0.5,0.25,0.25]", None),
    # An interpolation of another split key does not give each seed its own experiment.
    ("data.split_seed=0,1", "experiment_name=lab_${data.split_fractions}"),
])
def test_a_sweep_over_any_split_setting_needs_that_setting_in_the_experiment_name(tmp_path, sweep, name_override):
    from bench.preflight import plan_runs, preflight

    key = sweep.split("=", 1)[0]
    args = ["-m", sweep, "model=simple_cnn", "model.pretrained=false", f"paths.results_dir={tmp_path}"]
    report = preflight(plan_runs([*args, *([name_override] if name_override else [])]))
    assert any(p.startswith(f"{key} is swept") for p in report.problems), report.format()
    ok = preflight(plan_runs([*args, f"experiment_name=lab_${{{key}}}"]))
    assert not any("is swept" in p for p in ok.problems), ok.format()


def test_the_default_experiment_is_named_after_the_data():
    from bench.config import default_experiment_name

    a = default_experiment_name("imagefolder", "/data/lab1/images")
    b = default_experiment_name("imagefolder", "/data/lab2/images")
    assert a.startswith("images-") and b.startswith("images-") and a != b
    assert compose_cfg().experiment_name == "synthetic"
    assert compose_cfg("data=imagefolder", "data.root=/data/lab1/images").experiment_name == a
    assert compose_cfg("experiment=gavas2021", "data.root=/x").experiment_name == "gavas2021"


# --------------------------------------------------------------------------- CPU threads
def test_each_job_takes_its_share_of_the_cores(tmp_path, monkeypatch):
    import socket
    import subprocess
    import sys

    from bench.training import threads

    share = threads.CpuShare(tmp_path)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with share:
            assert share.threads(cores=8) == 8  # alone
            host = socket.gethostname()
            (tmp_path / "active" / f"{host}-{other.pid}").touch()  # a second live job on this machine
            (tmp_path / "active" / f"{host}-999999999").touch()  # a job that died without cleaning up
            (tmp_path / "active" / f"othernode-{other.pid}").touch()  # a job on another cluster node
            assert share.jobs() == 2 and share.threads(cores=8) == 4 and share.threads(cores=1) == 1
            assert not (tmp_path / "active" / f"{host}-999999999").exists()  # the stale entry is gone
        assert not share.me.exists()
    finally:
        other.kill()
    before = torch.get_num_threads()
    fixed = threads.thread_policy(3, tmp_path)
    try:
        with fixed:
            assert torch.get_num_threads() == 3 and fixed.rebalance() == 3
    finally:
        torch.set_num_threads(before)
