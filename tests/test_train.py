"""The harness end to end on the CPU: config, training, run folder, metrics, failures."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError

from bench import runs
from bench.runs import disk_errors as write_errors
from bench.metrics import classification_metrics
from omegaconf import OmegaConf

from bench.training.engine import cpu_bf16_supported
from bench.training.precision import fold_trial, resolve_precision
from bench.cli.train import cli
from bench.training import run_training as train

from .conftest import compose_cfg

from bench.config import CONF_DIR

CONF = Path(CONF_DIR)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


# --------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_composes(experiment):
    cfg = compose_cfg(f"experiment={experiment}", "data.root=/data")
    assert cfg.experiment_name == experiment


@pytest.mark.parametrize(
    "group, option",
    [(g, o) for g in ("data", "optim", "sched", "trainer") for o in _options(g)],
)
def test_every_group_option_composes_to_its_file(group, option):
    # Every value written in the option's YAML file (read here directly) is what the composed
    # config holds; a schema default silently winning over the file would show.
    cfg = compose_cfg(f"{group}={option}", "data.root=/data")
    written = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{option}.yaml"), resolve=False)
    composed = OmegaConf.to_container(cfg[group], resolve=False)
    for key, value in written.items():
        if value != "???":
            assert composed[key] == value, f"{group}={option}: {key}"


@pytest.mark.parametrize("model", ["inception_v3", "vgg19_bn", "simple_cnn"])
def test_a_model_option_selects_that_model(model):
    cfg = compose_cfg(f"model={model}")
    assert cfg.model.name == model and cfg.model.pretrained is True


def test_defaults_are_the_published_protocol():
    cfg = compose_cfg()
    assert cfg.optim._target_ == "torch.optim.SGD" and cfg.optim.lr == 1e-3 and cfg.optim.momentum == 0.9
    assert cfg.optim.weight_decay == 0.0
    assert cfg.sched.step_size == 7 and cfg.sched.gamma == 0.1
    assert cfg.trainer.epochs == 25 and cfg.trainer.batch_size == 32
    assert cfg.model.pretrained is True
    assert list(cfg.data.split_fractions) == [0.64, 0.24, 0.12]


@pytest.mark.parametrize("bad", ["trainer.epocs=3", "data.image_sise=64", "modle.name=resnet18"])
def test_typo_in_a_key_fails_at_compose(bad):
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        compose_cfg(bad)


def test_unknown_model_fails_at_start_with_closest_match(capsys):
    assert cli(["model=resnt34"]) == 2
    err = capsys.readouterr().err
    assert "resnt34" in err and "resnet34" in err


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


def test_the_published_sweep_follows_the_published_protocol():
    from bench.config.recipe import protocol_deviations

    sweep = compose_cfg("experiment=gavas2021", "data.root=/data", return_hydra_config=True)
    models = str(sweep.hydra.sweeper.params.model).split(",")
    assert len(models) == 27
    for model in models:
        assert protocol_deviations(compose_cfg("experiment=gavas2021", "data.root=/data", f"model={model}")) == []
    changed = compose_cfg("experiment=gavas2021", "data.root=/data", "model=inception_v3", "data.image_size=224",
                          "optim=adam", "sched=cosine")
    found = protocol_deviations(changed)
    assert "data.image_size=224 (paper: 299)" in found
    assert "optim._target_=torch.optim.Adam (paper: torch.optim.SGD)" in found
    assert any(d.startswith("sched._target_=") for d in found)


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
    import torch

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


# --------------------------------------------------------------------------- split and devices
def test_split_is_identical_across_models_and_invocations(make_cfg, tmp_path):
    train(make_cfg("trainer.epochs=1", "trainer.max_batches=1"))
    manifest = tmp_path / "results" / "synthetic" / "manifest.csv"
    first = manifest.read_bytes()
    train(make_cfg("model=squeezenet1_1", "trainer.epochs=1", "trainer.max_batches=1", "trainer.eval_batch_size=512"))
    assert manifest.read_bytes() == first
    sq = runs.RunDir.for_run(tmp_path / "results" / "synthetic", "squeezenet1_1", 0)
    test_paths = set(pd.read_csv(sq.predictions("test"))["path"])
    m = pd.read_csv(manifest)
    assert test_paths == set(m.loc[m.split == "test", "path"])
    counts = m.groupby(["label", "split"]).size().unstack()
    assert (counts["test"] >= 1).all() and (counts["train"] > counts["val"]).all()


def test_bf16_autocast_and_channels_last_run_on_cpu(make_cfg):
    out = train(make_cfg("trainer.amp=true", "trainer.channels_last=true", "trainer.epochs=1", "trainer.max_batches=2"))
    assert out["status"] == "completed"


def test_a_failing_model_is_recorded_not_raised(make_cfg, tmp_path):
    # inception_v3 cannot run at 32 px: the run fails with a clear message and a status file.
    out = train(make_cfg("model=inception_v3"))
    assert out["status"] == "failed" and "inception_v3" in out["error"]
    rd = runs.RunDir.for_run(tmp_path / "results" / "synthetic", "inception_v3", 0)
    status = json.loads(rd.status.read_text())
    assert status["status"] == "failed" and status["error"]
    board = pd.read_csv(tmp_path / "results" / "synthetic" / "leaderboard.csv")
    assert board.loc[board.model == "inception_v3", "status"].item() == "failed"


def test_a_changed_config_never_reuses_the_old_result(make_cfg, tmp_path):
    train(make_cfg("trainer.epochs=1", "trainer.max_batches=1"))
    out = train(make_cfg("trainer.epochs=1", "trainer.max_batches=1", "optim.lr=0.5"))
    assert out["status"] == "completed"
    replaced = list((tmp_path / "results" / "synthetic" / "runs" / "simple_cnn" / "replaced").iterdir())
    assert len(replaced) == 1 and (replaced[0] / "metrics.json").exists()


def test_bloodmnist_trains_on_its_official_splits(tmp_path, cache_dir):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 40), ("val", 16), ("test", 16)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 8).reshape(-1, 1)
    np.savez(tmp_path / "bloodmnist.npz", **arrays)
    results = tmp_path / "results"
    cfg = compose_cfg("trainer=cpu_smoke", "model=simple_cnn", "model.pretrained=false", "data=bloodmnist",
                      f"data.root={tmp_path}", "data.bloodmnist_size=28", "data.image_size=32", "trainer.epochs=1",
                      f"paths.results_dir={results}", f"paths.cache_dir={cache_dir}")
    assert train(cfg)["status"] == "completed"
    metrics = runs.read_json(results / "bloodmnist28" / "runs" / "simple_cnn" / "seed0" / "metrics.json")
    assert metrics["test"]["n"] == 16 and metrics["val"]["n"] == 16 and metrics["input_size"] == 32
    assert metrics["classes"][3] == "ig"


def test_a_typo_on_the_command_line_names_the_closest_key(capsys):
    assert cli(["trainer.epocs=3"]) == 2
    err = capsys.readouterr().err
    assert "trainer.epochs" in err and "epocs" in err


def test_bench_train_refuses_a_cross_validation_protocol(capsys):
    assert cli(["experiment=cheuque2022_two_level", "data.root=/data"]) == 2
    assert "bench-cv" in capsys.readouterr().err


# --------------------------------------------------------------------------- CPU precision trial

def _t(amp=None, cl=None):
    return OmegaConf.create({"amp": amp, "channels_last": cl})


def test_resolve_precision_defaults():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision(_t(), cuda) == (True, True)
    assert resolve_precision(_t(False, False), cuda) == (False, False)
    assert resolve_precision(_t(), cpu) == ((None if cpu_bf16_supported() else False), True)
    assert resolve_precision(_t(True, False), cpu) == (True, False)
    assert resolve_precision(_t(), torch.device("mps")) == (False, False)


def test_cpu_precision_trial_is_recorded_and_refined(make_cfg, tmp_path):
    cfg = make_cfg("trainer.amp=null", "trainer.channels_last=null")
    first = train(cfg)
    assert first["status"] == "completed"
    metrics = runs.read_json(runs.RunDir(Path(first["run_dir"])).metrics)
    assert isinstance(metrics["amp"], bool) and metrics["channels_last"] is True
    cache = Path(cfg.paths.cache_dir) / "cpu_precision.json"
    if not cpu_bf16_supported():
        assert not metrics["amp"]
        return
    (record,) = runs.read_json(cache).values()
    assert record["amp"] == metrics["amp"] and record["trials"] == 1
    # A second run on this machine adds its trial to the record and follows the record's verdict.
    again = train(make_cfg("trainer.amp=null", "trainer.channels_last=null", "experiment_name=again"))
    (refined,) = runs.read_json(cache).values()
    assert refined["trials"] == 2
    assert refined["step_s_fp32"] <= record["step_s_fp32"] and refined["step_s_bf16"] <= record["step_s_bf16"]
    assert runs.read_json(runs.RunDir(Path(again["run_dir"])).metrics)["amp"] == refined["amp"]


def test_precision_record_keeps_the_fastest_steps():
    # A trial on a busy machine (both steps slow, bf16 looking worse) does not undo a quiet one.
    quiet = fold_trial({False: 0.100, True: 0.060}, {})
    assert quiet == {"amp": True, "step_s_fp32": 0.100, "step_s_bf16": 0.060, "trials": 1}
    busy = fold_trial({False: 0.200, True: 0.400}, quiet)
    assert busy["amp"] is True and busy["trials"] == 2 and busy["step_s_bf16"] == 0.060
    # A choice made under load is corrected by the next quiet trial.
    loaded = fold_trial({False: 0.300, True: 0.280}, {})
    assert loaded["amp"] is False
    assert fold_trial({False: 0.100, True: 0.060}, loaded)["amp"] is True
    # bf16 must win by BF16_CPU_MIN_GAIN; a missing time never wins.
    assert fold_trial({False: 0.100, True: 0.095}, {})["amp"] is False
    assert fold_trial({False: 0.100, True: float("nan")}, {})["amp"] is False


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_an_unreadable_last_checkpoint_means_training_again(make_cfg, damage, caplog):
    # Per-epoch checkpoints skip fsync, so a crash of the machine can leave last.pt cut short:
    # the run starts over (and ends where an uninterrupted run ends) instead of failing.
    cfg = make_cfg("trainer.epochs=2")
    first = train(cfg)
    run_dir = runs.RunDir(Path(first["run_dir"]))
    before = runs.read_json(run_dir.metrics)
    status = runs.read_json(run_dir.status)
    run_dir.write_status(runs.STATUS_RUNNING, config_hash=status["config_hash"])
    run_dir.metrics.unlink()
    data = run_dir.last_ckpt.read_bytes()
    run_dir.last_ckpt.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    again = train(cfg)
    assert again["status"] == "completed"
    assert "cannot resume" in caplog.text and "training it from the start" in caplog.text
    after = runs.read_json(run_dir.metrics)
    assert after["epochs_run"] == 2 and after["val"] == before["val"] and after["test"] == before["test"]


def test_progress_bar_is_sparse_when_logging_to_a_file(capsys):
    from bench.training.progress import EpochProgress

    with EpochProgress(True, 100, "model epoch 1/1") as bar:
        for _ in range(100):  # 0.5 s: a terminal's bar (0.1 s interval) would be redrawn ~5 times
            time.sleep(0.005)
            bar.on_batch({"loss": torch.tensor(1.0), "n": 32})
    err = capsys.readouterr().err  # pytest's capture is not a terminal
    assert 0 < err.count("model epoch 1/1") <= 3


def test_sweep_progress_line(caplog):
    import logging

    from bench.cli.train import _log_sweep_progress

    done = [{"status": "completed"}, {"status": "failed"}, {"status": "skipped"}]
    with caplog.at_level(logging.INFO, logger="bench.train"):
        _log_sweep_progress(done, {"total": 27, "start": time.perf_counter() - 3725})
        _log_sweep_progress(done[:1], {"total": 1, "start": time.perf_counter()})  # a single run: no line
    assert [r.getMessage() for r in caplog.records] == [
        "sweep: 3 of 27 run(s) done (1 failed, 1 already complete) after 1 h 02 min"]


@pytest.mark.parametrize("every_s, last_writes", [(0, 3), (1e9, 1)])
def test_checkpoints_are_written_at_most_every_checkpoint_every_s(make_cfg, monkeypatch, every_s, last_writes):
    written = []
    real_save = write_errors.save_torch_atomic

    def counting_save(path, obj, **kw):
        written.append(Path(path).name)
        return real_save(path, obj, **kw)

    monkeypatch.setattr(write_errors, "save_torch_atomic", counting_save)
    out = train(make_cfg("trainer.epochs=3", f"trainer.checkpoint_every_s={every_s}"))
    assert out["status"] == "completed"
    assert written.count("last.pt") == last_writes  # the last epoch is always written
    assert 1 <= written.count("best.pt") <= last_writes
    best = torch.load(Path(out["run_dir"]) / "best.pt", weights_only=True)
    metrics = runs.read_json(Path(out["run_dir"]) / "metrics.json")
    assert best["epoch"] == metrics["best_epoch"]

