"""One training run end to end on the CPU (bench.training.run): a short real run and its folder,
failures recorded not raised (a failing model, a NaN loss), the CUDA OOM retry, class weights and
the balanced sampler, memory across runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench import runs
from bench.metrics import classification_metrics
from bench.training import run_training as train

from tests.helpers import compose_cfg


# --------------------------------------------------------------------------- one training run
@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir):
    """A short real training run shared by the checks below."""
    results = tmp_path_factory.mktemp("results")
    cfg = compose_cfg(
        "trainer=cpu_smoke", "model=simple_cnn", "model.pretrained=false", "data.image_size=32",
        "data.synthetic_n_per_class=60", "data.synthetic_size=48", "data.decode_workers=1",
        "trainer.epochs=4", "optim=adam", "optim.lr=0.003", "sched=constant",
        f"paths.results_dir={results}", f"paths.cache_dir={cache_dir}",
    )
    out = train(cfg)
    return cfg, out, runs.RunDir.for_run(results / cfg.experiment_name, "simple_cnn", 0)


def test_short_training_beats_chance_by_a_wide_margin(trained):
    _, out, _ = trained
    assert out["status"] == "completed"
    assert out["test_acc"] > 0.5  # chance is 1/8


def test_run_folder_has_every_output(trained):
    _, _, rd = trained
    for path in (rd.config, rd.status, rd.history, rd.metrics, rd.best_ckpt, rd.last_ckpt,
                 rd.predictions("val"), rd.predictions("test"), rd.excluded):
        assert path.exists(), path
    history = pd.read_csv(rd.history)
    assert list(history.columns) == ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc",
                                     "val_balanced_acc", "val_macro_f1", "seconds", "train_img_s"]
    assert history["epoch"].tolist() == [1, 2, 3, 4]
    metrics = runs.read_json(rd.metrics)
    assert metrics["best_epoch"] == int(history["val_acc"].idxmax()) + 1  # idxmax: first of ties
    assert metrics["params_m"] > 0 and metrics["gflops"] > 0 and metrics["train_time_s"] > 0
    assert metrics["env"]["torch"]
    # The smoke run is far from the paper's recipe, and says how.
    assert "data.kind=synthetic (paper: imagefolder)" in metrics["protocol_deviations"]
    assert "model.pretrained=false (paper: true)" in metrics["protocol_deviations"]
    assert (rd.root.parents[2] / "leaderboard.csv").exists()


def test_metrics_equal_a_recomputation_from_the_predictions(trained):
    _, _, rd = trained
    metrics = runs.read_json(rd.metrics)
    classes = metrics["classes"]
    for split in ("val", "test"):
        pred = pd.read_csv(rd.predictions(split))
        assert list(pred.columns[3:]) == [f"prob_{c}" for c in classes]
        probs = pred[[f"prob_{c}" for c in classes]].to_numpy()
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
        index = {c: i for i, c in enumerate(classes)}
        y_true = pred["label"].map(index).to_numpy()
        y_pred = pred["predicted"].map(index).to_numpy()
        assert (probs.argmax(1) == y_pred).all()
        assert classification_metrics(y_true, y_pred, classes) == metrics[split]


def test_best_checkpoint_loads_with_weights_only(trained):
    _, _, rd = trained
    ckpt = torch.load(rd.best_ckpt, map_location="cpu", weights_only=True)
    assert ckpt["class_names"] == runs.read_json(rd.metrics)["classes"]
    assert ckpt["input_size"] == 32 and ckpt["model_name"] == "simple_cnn"


def test_second_invocation_skips_a_completed_run(trained):
    cfg, _, rd = trained
    before = rd.metrics.stat().st_mtime_ns
    again = train(cfg)
    assert again["status"] == "skipped"
    assert rd.metrics.stat().st_mtime_ns == before


def test_a_failing_model_is_recorded_not_raised(make_cfg, tmp_path):
    # inception_v3 cannot run at 32 px: the run fails with a clear message and a status file.
    out = train(make_cfg("model=inception_v3"))
    assert out["status"] == "failed" and "inception_v3" in out["error"]
    rd = runs.RunDir.for_run(tmp_path / "results" / "synthetic", "inception_v3", 0)
    status = json.loads(rd.status.read_text())
    assert status["status"] == "failed" and status["error"]
    board = pd.read_csv(tmp_path / "results" / "synthetic" / "leaderboard.csv")
    assert board.loc[board.model == "inception_v3", "status"].item() == "failed"


@pytest.mark.own_data
def test_class_weights_and_the_balanced_sampler_train(make_cfg):
    plain = train(make_cfg("trainer.epochs=1", "experiment_name=plain"))
    weighted = train(make_cfg("trainer.epochs=1", "trainer.class_weights=balanced", "trainer.sampler=balanced",
                              "data.augment.brightness=0.2", "data.augment.hue=0.05", "experiment_name=weighted"))
    assert plain["status"] == weighted["status"] == "completed", weighted.get("error")
    a = torch.load(Path(plain["run_dir"]) / "best.pt", weights_only=True)["model"]
    b = torch.load(Path(weighted["run_dir"]) / "best.pt", weights_only=True)["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_is_a_failed_run(make_cfg):
    out = train(make_cfg("trainer.epochs=1", "optim.lr=1e30"))
    assert out["status"] == "failed" and "not finite" in out["error"]


def test_cuda_oom_retries_with_half_the_micro_batch(make_cfg, monkeypatch, tmp_path):
    import bench.training.classifier as train_mod

    import weakref

    calls, first_attempt = [], []
    real_fit = train_mod.fit

    def flaky_fit(cfg, run_dir, exp_dir, chash, threads, tracker, *, grad_accum, oom_retry=False):
        calls.append(grad_accum)
        if len(calls) == 1:
            weights = torch.zeros(1024, 1024)  # stands for the failed attempt's model on the GPU
            first_attempt.append(weakref.ref(weights))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        # The failed attempt's tensors are gone before the retry allocates its own.
        assert first_attempt[0]() is None
        return real_fit(cfg, run_dir, exp_dir, chash, threads, tracker, grad_accum=grad_accum, oom_retry=oom_retry)

    monkeypatch.setattr(train_mod, "fit", flaky_fit)
    out = train(make_cfg("trainer.epochs=1", "trainer.max_batches=2"))
    assert out["status"] == "completed" and calls == [1, 2]
    metrics = runs.read_json(tmp_path / "results" / "synthetic" / "runs" / "simple_cnn" / "seed0" / "metrics.json")
    assert metrics["oom_retry"] is True and metrics["grad_accum"] == 2 and metrics["batch_size"] == 32


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_host_memory_does_not_grow_across_models(make_cfg):
    # Several runs in one process, as a sweep runs them: after the first (imports, caches),
    # resident memory stays flat. resnet18 holds ~45 MB of weights (+ as much in momentum and
    # a checkpoint copy), so keeping any of it alive between runs would show at once.
    sizes = []
    for seed in range(3):
        out = train(make_cfg("model=resnet18", f"seed={seed}", "trainer.epochs=1", "trainer.max_batches=2"))
        assert out["status"] == "completed"
        sizes.append(_rss_mb())
    assert sizes[-1] - sizes[1] < 40, sizes  # MB
