"""Transfer-learning protocols: SVMs on cached CNN features (bench-svm, acevedo2019_svm),
fine-tuning the last blocks (acevedo2019_finetune) and scratch vs frozen side by side
(scratch_vs_pretrained + bench.protocols.compare).

The end-to-end runs use tiny synthetic data, random-weight extractors and simple_cnn."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from hydra.errors import ConfigCompositionException
from torch import nn

from bench import runs
from bench.cli import compare as compare_cli, svm as svm_cli
from bench.metrics import classification_metrics
from bench.models import create_model
from bench.models.heads import configure_model
from bench.protocols import cnn_features, svm_features
from bench.training import run_training as train

from tests.helpers import compose_cfg


NUM_CLASSES = 8


# --------------------------------------------------------------------------- configs
def test_the_three_experiments_compose():
    svm = compose_cfg("experiment=acevedo2019_svm", "data.root=/data")
    assert svm.experiment_name == "acevedo2019_svm" and svm.data.kind == "imagefolder"
    assert list(svm.svm.feature_models) == ["vgg16", "inception_v3"] and list(svm.svm.kernels) == ["rbf", "cubic"]
    assert svm.svm.cv_folds == 5 and svm.model.pretrained is True and svm.data.image_size is None
    assert svm.svm.coef0 == 0.0 and svm.svm.balance_to == 4608  # scikit-learn's cubic kernel; 4,608 per class

    ft = compose_cfg("experiment=acevedo2019_finetune", "data.root=/data", "model=inception_v3")
    assert ft.experiment_name == "acevedo2019_finetune"
    assert list(ft.model.head_hidden) == [1024] and ft.model.trainable_conv_blocks == 4 and ft.model.pretrained
    assert ft.optim.lr == 1e-4 and ft.trainer.epochs == 100

    base = compose_cfg("experiment=scratch_vs_pretrained", "data.root=/data")
    assert base.experiment_name == "scratch_vs_pretrained"
    scratch = compose_cfg("experiment=scratch_vs_pretrained", "variant=scratch", "data.root=/data")
    frozen = compose_cfg("experiment=scratch_vs_pretrained", "variant=frozen", "data.root=/data",
                         "model.name=timm/legacy_xception")
    assert scratch.experiment_name == "scratch_vs_pretrained/scratch"
    assert frozen.experiment_name == "scratch_vs_pretrained/frozen"
    assert (scratch.model.pretrained, scratch.model.freeze_backbone) == (False, False)
    assert (frozen.model.pretrained, frozen.model.freeze_backbone) == (True, True)
    # The paper: frozen head Dense 256 ReLU, Dropout 0.5, Dense N; scratch = the stock architectures.
    assert list(frozen.model.head_hidden) == [256] and frozen.model.head_dropout == 0.5
    assert list(scratch.model.head_hidden) == []
    for cfg in (scratch, frozen):  # SGD lr 1e-5 with Keras decay 1e-3 per iteration, 100 epochs, batch 16
        assert cfg.optim.lr == 1e-5 and cfg.optim.momentum == 0.0 and cfg.sched.decay == 1e-3
        assert cfg.sched._target_ == "bench.training.schedules.inverse_time" and cfg.trainer.sched_interval == "step"
        assert cfg.trainer.epochs == 100 and cfg.trainer.batch_size == 16
        assert list(cfg.data.classes) == ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    with pytest.raises(ConfigCompositionException):
        compose_cfg("variant=frozen")  # only reachable through its experiment


def test_scratch_vs_pretrained_sweeps_both_variants_of_every_model():
    from bench.preflight import plan_runs

    plan = plan_runs(["-m", "experiment=scratch_vs_pretrained", "data.root=/data"])
    assert plan.models == ["resnet50", "vgg16", "vgg19", "inception_v3", "timm/legacy_xception",
                           "densenet121", "densenet169", "densenet201"]
    assert str(plan.cfg.hydra.sweeper.params.variant) == "scratch,frozen"


def test_a_cut_head_trains_balanced_records_itself_and_rebuilds_from_best_pt(make_cfg, caplog):
    from bench.training.checkpoints import rebuild_model

    cfg = make_cfg("model=alexnet", "data.image_size=64", "model.head_keep_fc=1", "model.head_hidden=[16]",
                   "model.trainable_conv_blocks=2", "trainer.balance_to=40", "trainer.epochs=1",
                   "trainer.batch_size=64", "experiment_name=cut")
    with caplog.at_level("INFO", logger="bench.train"):
        out = train(cfg)
    assert out["status"] == "completed", out.get("error")
    # 30 synthetic images per class -> 19 training images each (64 %): 8 x 40 draws per epoch.
    assert "trainer.balance_to=40: 320 training draws per epoch" in caplog.text
    rd = runs.RunDir.for_run(cfg.paths.results_dir + "/cut", "alexnet", 0)
    ckpt = torch.load(rd.best_ckpt, map_location="cpu", weights_only=True)
    assert ckpt["head"] == {"hidden": [16], "dropout": 0.0, "keep_fc": 1}
    model = rebuild_model(ckpt)  # loads strictly
    assert [(m.in_features, m.out_features) for m in model.classifier.modules() if isinstance(m, nn.Linear)] == [
        (9216, 4096), (4096, 16), (16, NUM_CLASSES)]


def test_feature_extractors_give_the_published_feature_sizes():
    with torch.device("meta"):
        vgg = cnn_features.feature_extractor("vgg16", pretrained=False)
        inception = cnn_features.feature_extractor("inception_v3", pretrained=False)
        assert vgg(torch.empty(2, 3, 224, 224)).shape == (2, 4096)  # fc7 (penultimate FC), after ReLU
        assert inception(torch.empty(2, 3, 299, 299)).shape == (2, 2048)  # pooled
    assert isinstance(vgg.classifier[4], nn.ReLU) and isinstance(vgg.classifier[6], nn.Identity)
    with torch.device("meta"):  # the paper's: the network without its fully connected layers
        no_fc = cnn_features.feature_extractor("vgg16", pretrained=False, keep_fc=0)
        assert no_fc(torch.empty(2, 3, 224, 224)).shape == (2, 7 * 7 * 512)
        assert not any(isinstance(m, nn.Linear) for m in no_fc.modules())


# --------------------------------------------------------------------------- the SVM protocol
def test_svm_features_without_the_fully_connected_layers_are_cached_apart(make_cfg, tmp_path):
    base = ["experiment=acevedo2019_svm", "data=synthetic", "svm.feature_models=[alexnet]", "data.image_size=64",
            "svm.kernels=[linear]", "svm.balance_to=null"]
    for extra in ([], ["model.head_keep_fc=null"], ["model.head_keep_fc=0"]):
        out = svm_features.run_svm_protocol(make_cfg(*base, *extra))
        assert [r["status"] for r in out] == ["completed"], out
    features = tmp_path / "results" / "acevedo2019_svm" / "features"
    dims = {}
    for name in ("alexnet-random-seed0-keepfc1-train-64.npz", "alexnet-random-seed0-train-64.npz",
                 "alexnet-random-seed0-keepfc0-train-64.npz"):
        with np.load(features / name) as z:
            dims[name] = z["X"].shape[1]
    # fc6 (the recipe), fc7 and the flattened 6 x 6 x 256 conv map of AlexNet (no run reused another's cache)
    assert list(dims.values()) == [4096, 4096, 6 * 6 * 256]


def test_svm_protocol_end_to_end_with_cached_features(make_cfg, tmp_path, monkeypatch):
    calls = []
    real_extract = cnn_features.extract_features

    def spy(*args, **kwargs):
        calls.append(len(args[1]) if kwargs.get("index") is None else len(kwargs["index"]))
        return real_extract(*args, **kwargs)

    monkeypatch.setattr(cnn_features, "extract_features", spy)
    overrides = ["experiment=acevedo2019_svm", "data=synthetic", "svm.feature_models=[resnet18]",
                 "svm.balance_to=24", "trainer.eval_batch_size=64"]
    cfg = make_cfg(*overrides, "svm.c_grid=[1,10]")
    exp_dir = tmp_path / "results" / "acevedo2019_svm"

    out = svm_features.run_svm_protocol(cfg)
    assert [(r["model"], r["status"]) for r in out] == [("resnet18+svm-rbf", "completed"),
                                                       ("resnet18+svm-cubic", "completed")]
    assert len(calls) == 4  # train, val, test and the augmented minority images, once each
    feature_files = sorted((exp_dir / "features").glob("*.npz"))
    assert [f.name for f in feature_files] == [
        "resnet18-random-seed0-keepfc1-test-32.npz", "resnet18-random-seed0-keepfc1-train-32.npz",
        "resnet18-random-seed0-keepfc1-train-balanced24-seed0-32.npz", "resnet18-random-seed0-keepfc1-val-32.npz"]
    mtimes = {f: f.stat().st_mtime_ns for f in feature_files}

    for kernel in ("rbf", "cubic"):
        rd = runs.RunDir.for_run(exp_dir, f"resnet18+svm-{kernel}", 0)
        assert rd.read_status()["status"] == "completed"
        m = runs.read_json(rd.metrics)
        assert m["protocol"] == "svm_features" and m["epochs"] is None and m["params_m"] is None
        folds = m["svm"]["cv_fold_accuracy"]
        assert len(folds) == 5 and all(0.0 <= a <= 1.0 for a in folds)
        assert m["svm"]["cv_mean_accuracy"] == pytest.approx(np.mean(folds))
        assert m["svm"]["selected"]["C"] in (1.0, 10.0)
        assert set(m["svm"]["n_fit_per_class"].values()) == {24}  # every class balanced up to 24
        cv_table = pd.read_csv(rd.root / "cv.csv")
        assert len(cv_table) == 2 and cv_table["selected"].sum() == 1
        classes = m["classes"]
        assert len(classes) == 8
        for split in ("val", "test"):
            pred = pd.read_csv(rd.predictions(split))
            probs = pred[[f"prob_{c}" for c in classes]].to_numpy()
            np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
            index = {c: i for i, c in enumerate(classes)}
            y_pred = pred["predicted"].map(index).to_numpy()
            assert (probs.argmax(1) == y_pred).all()
            assert classification_metrics(pred["label"].map(index).to_numpy(), y_pred, classes) == m[split]

    board = pd.read_csv(exp_dir / "leaderboard.csv")
    assert sorted(board["model"]) == ["resnet18+svm-cubic", "resnet18+svm-rbf"]
    assert (board["status"] == "completed").all() and board["rank"].notna().all()
    assert {"basophil", "platelet"} <= set(board.columns)  # per-class accuracy columns

    # A different C grid re-fits both SVMs from the cached features: no extraction at all.
    calls.clear()
    out = svm_features.run_svm_protocol(make_cfg(*overrides, "svm.c_grid=[1]"))
    assert [r["status"] for r in out] == ["completed", "completed"]
    assert calls == []
    assert {f: f.stat().st_mtime_ns for f in feature_files} == mtimes
    m = runs.read_json(runs.RunDir.for_run(exp_dir, "resnet18+svm-rbf", 0).metrics)
    assert m["svm"]["selected"]["C"] == 1.0 and all(f["cached"] for f in m["features"].values())

    # The same config again: nothing to do.
    out = svm_features.run_svm_protocol(make_cfg(*overrides, "svm.c_grid=[1]"))
    assert [r["status"] for r in out] == ["skipped", "skipped"] and calls == []


def test_bench_svm_rejects_bad_input(capsys):
    assert svm_cli.main(["experiment=acevedo2019_svm", "svm.kernels=[cubical]"]) == 2
    assert "cubical" in capsys.readouterr().err
    assert svm_cli.main(["-m", "experiment=acevedo2019_svm"]) == 2


# --------------------------------------------------------------------------- frozen training, comparison
def test_frozen_backbone_training_and_the_side_by_side_table(make_cfg, tmp_path):
    common = ["experiment=scratch_vs_pretrained", "data=synthetic", "model=simple_cnn", "model.pretrained=false",
              "model.head_hidden=[16]", "model.head_dropout=0.5", "optim=adam", "optim.lr=0.01",
              "sched=constant", "trainer.epochs=2", "data.classes=null", "trainer.sched_interval=epoch"]
    frozen_cfg = make_cfg(*common, "variant=frozen", "model.pretrained=false")
    assert frozen_cfg.model.freeze_backbone and frozen_cfg.experiment_name == "scratch_vs_pretrained/frozen"
    out = train(frozen_cfg)
    assert out["status"] == "completed", out.get("error")
    exp = tmp_path / "results" / "scratch_vs_pretrained"
    rd = runs.RunDir.for_run(exp / "frozen", "simple_cnn", 0)

    torch.manual_seed(0)  # what _fit built before training
    initial = create_model("simple_cnn", num_classes=NUM_CLASSES, pretrained=False)
    configure_model(initial, frozen_cfg.model, num_classes=NUM_CLASSES)
    start = initial.state_dict()
    best = torch.load(rd.best_ckpt, map_location="cpu", weights_only=True)["model"]
    assert set(best) == set(start)
    backbone = [k for k in start if not k.startswith("fc.")]
    assert backbone and any("running_mean" in k for k in backbone)
    for k in backbone:  # weights and BatchNorm statistics untouched
        assert torch.equal(best[k], start[k]), k
    assert any(not torch.equal(best[k], start[k]) for k in start if k.startswith("fc."))
    metrics = runs.read_json(rd.metrics)
    head_m = (256 * 16 + 16 + 16 * NUM_CLASSES + NUM_CLASSES) / 1e6
    assert metrics["trainable_params_m"] == pytest.approx(head_m)
    assert metrics["params_m"] > metrics["trainable_params_m"]

    out = train(make_cfg(*common, "variant=scratch"))
    assert out["status"] == "completed", out.get("error")
    assert compare_cli.main([str(exp)]) == 0
    table = pd.read_csv(exp / "comparison.csv")
    assert table["model"].tolist() == ["simple_cnn"]
    row = table.iloc[0]
    for v in ("scratch", "frozen"):
        assert row[f"{v}_status"] == "completed" and row[f"{v}_n_seeds"] == 1
        assert 0 <= row[f"{v}_test_acc"] <= 1 and row[f"{v}_train_time_s"] > 0
        assert 0 <= row[f"{v}_basophil"] <= 1  # per-class test accuracy
    assert row["frozen_trainable_params_m"] < row["scratch_trainable_params_m"]
    assert row["test_acc_frozen_minus_scratch"] == pytest.approx(row["frozen_test_acc"] - row["scratch_test_acc"],
                                                                 abs=1e-5)
    assert list(table.columns[:3]) == ["model", "scratch_status", "scratch_n_seeds"]


# --------------------------------------------------------------------------- bench-svm says what it will do
def test_the_svm_fits_are_announced_with_sizes_and_a_timed_estimate_and_counted_by_a_bar(monkeypatch, caplog):
    import logging

    from bench.protocols import svm_fit

    rng = np.random.default_rng(0)
    X = rng.normal(size=(240, 6)).astype(np.float32)
    y = np.repeat(np.arange(3), 80)
    scfg = compose_cfg("experiment=acevedo2019_svm", "data.root=/d", "svm.c_grid=[1,10]").svm
    kernel = svm_fit.parse_kernel("rbf")
    # The estimate extrapolates from two timed fits: positive, and larger for more rows.
    small = svm_fit.estimate_fit_seconds(kernel, scfg, 0, X, y, 100, rows=20)
    large = svm_fit.estimate_fit_seconds(kernel, scfg, 0, X, y, 10_000, rows=20)
    assert small is not None and 0 < small < large
    assert svm_fit.estimate_fit_seconds(kernel, scfg, 0, X, y, 100, rows=100) is None  # under 4 x rows: no bother
    monkeypatch.setattr(svm_fit, "ESTIMATE_ROWS", 20)
    with caplog.at_level(logging.INFO, logger="bench.svm"):
        svm_fit.announce_fits("rbf", kernel, scfg, 0, X, y, 5)
    line = caplog.messages[-1]
    # 240 rows x 6 features, 3 classes; 5 folds x 2 values of C (gamma: scale) = 10 fits + the refit.
    assert "240 rows x 6 features, 3 classes; 5 fold(s) x 2 grid point(s) = 10 fits + 1 refit: about" in line
    assert "svm.balance_to=null" in line and "svm.cv_folds=3" in line

    updates = []

    class Bar:  # records what the bar is told
        def __init__(self, desc, total, unit="img"):
            updates.append(("total", total))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            updates.append(n)

    monkeypatch.setattr(cnn_features, "image_bar", Bar)
    search, _ = svm_fit._grid_search(kernel, scfg, 0, X, y, None, 5, False, desc="svm-rbf fits")
    assert updates == [("total", 10), *[1] * 10]  # one step per fold of each grid point
    assert search.cv_results_["mean_test_score"].shape == (2,)


@pytest.mark.fidelity
def test_the_svm_features_of_head_keep_fc_1_are_vgg16s_fc6_after_relu():
    from bench.protocols.cnn_features import feature_extractor

    torch.manual_seed(0)
    extractor = feature_extractor("vgg16", pretrained=False, seed=0, keep_fc=1)
    x = torch.rand(2, 3, 32, 32)
    # The same network as torchvision builds it, its layers called one by one: conv stages, the
    # 7x7 pooling, flatten, fc6 (classifier[0]) and its ReLU (classifier[1]); dropout is off in eval.
    reference = torchvision.models.vgg16()
    reference.load_state_dict({k: v for k, v in extractor.state_dict().items()}, strict=False)
    reference.eval()
    with torch.no_grad():
        expected = reference.classifier[1](reference.classifier[0](torch.flatten(reference.avgpool(
            reference.features(x)), 1)))
        got = extractor(x)
    assert got.shape == (2, 4096)
    torch.testing.assert_close(got, expected)


def test_two_stain_settings_side_by_side_with_each_external_set_and_what_differs(make_cfg, tmp_path, capsys):
    """Variants that differ only in data.stain: one line per model, with each variant's balanced accuracy on an
    external set and the difference, and the setting they differ in named."""
    from bench.cli.evaluate import main as evaluate
    from tests.helpers import colour_folders

    lab = colour_folders(tmp_path / "lab2", {"neutrophil": 4, "lymphocyte": 4}, size=20)
    exp = tmp_path / "results" / "stain"
    for stain in ("none", "reinhard"):
        out = train(make_cfg(f"experiment_name=stain/{stain}", f"data.stain={stain}", "trainer.epochs=1",
                             "trainer.max_batches=2"))
        assert out["status"] == "completed", out.get("error")
        assert evaluate([str(exp / stain), str(lab), "--name", "lab2", "--device", "cpu"]) == 0
    assert compare_cli.main([str(exp), "--variants", "none", "reinhard"]) == 0
    printed = capsys.readouterr().out
    assert "data.stain: none | reinhard" in printed and "lab2 bal_acc" in printed
    row = pd.read_csv(exp / "comparison.csv").iloc[0]
    ext = {v: runs.read_json(runs.RunDir.for_run(exp / v, "simple_cnn", 0).root / "external" / "lab2" / "metrics.json")
           ["balanced_accuracy"] for v in ("none", "reinhard")}
    assert row["none_ext_lab2_balanced_acc"] == pytest.approx(ext["none"], abs=1e-4)
    assert row["ext_lab2_balanced_acc_reinhard_minus_none"] == pytest.approx(ext["reinhard"] - ext["none"], abs=1e-4)
