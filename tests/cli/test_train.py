"""bench-train's command line (bench.cli.train): names and values checked before anything trains
(every swept value too), closest matches for typos, the sweep's progress line, Ctrl-C, and the
validation number hydra's main returns to a sweeper."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from sklearn.metrics import f1_score

from bench import runs
from bench.cli.train import cli

from tests.helpers import SMOKE_OVERRIDES


def test_unknown_model_fails_at_start_with_closest_match(capsys):
    assert cli(["model=resnt34"]) == 2
    err = capsys.readouterr().err
    assert "resnt34" in err and "resnet34" in err


def test_a_typo_on_the_command_line_names_the_closest_key(capsys):
    assert cli(["trainer.epocs=3"]) == 2
    err = capsys.readouterr().err
    assert "trainer.epochs" in err and "epocs" in err


def test_bench_train_refuses_a_cross_validation_protocol(capsys):
    assert cli(["experiment=cheuque2022_two_level", "data.root=/data"]) == 2
    assert "bench-cv" in capsys.readouterr().err


def test_sweep_progress_line(caplog):
    import logging

    from bench.cli.train import _log_sweep_progress

    done = [{"status": "completed"}, {"status": "failed"}, {"status": "skipped"}]
    with caplog.at_level(logging.INFO, logger="bench.train"):
        _log_sweep_progress(done, {"total": 27, "start": time.perf_counter() - 3725})
        _log_sweep_progress(done[:1], {"total": 1, "start": time.perf_counter()})  # a single run: no line
    assert [r.getMessage() for r in caplog.records] == [
        "sweep: 3 of 27 run(s) done (1 failed, 1 already complete) after 1 h 02 min"]


@pytest.mark.own_data
def test_the_cli_lists_bad_values_before_training(tmp_path, capsys):
    code = cli(["model=simple_cnn", "model.pretrained=false", "optim.lr=abc", "trainer.batch_size=0",
                f"paths.results_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and "optim.lr='abc'" in err and "trainer.batch_size=0" in err and "nothing was trained" in err
    assert not any(tmp_path.iterdir())


@pytest.mark.own_data
def test_an_unknown_experiment_lists_the_experiments(capsys):
    assert cli(["experiment=nonexist"]) == 2
    err = capsys.readouterr().err
    assert "experiment='nonexist' is not one of the experiment options" in err and "gavas2021" in err


# --------------------------------------------------------------------------- 7. Ctrl-C
@pytest.mark.reliability
def test_ctrl_c_says_how_to_resume_without_a_traceback(tmp_path, cache_dir):
    # Epochs enough that the signal always lands mid-training: 50 tiny epochs could all finish on a fast
    # machine (or with a warm precision record) between two polls of this test on a busy one.
    cmd = [sys.executable, "-m", "bench", "train", *SMOKE_OVERRIDES, "trainer.epochs=100000",
           "data.synthetic_n_per_class=60", f"paths.results_dir={tmp_path}", f"paths.cache_dir={cache_dir}"]
    # SIGINT as in a terminal: a suite started in the background (`cmd &`, nohup, some CI runners) passes
    # its children SIGINT ignored, and Python then never raises KeyboardInterrupt.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    history = tmp_path / "synthetic" / "runs" / "simple_cnn" / "seed0" / "history.csv"
    deadline = time.time() + 600  # generous: on a loaded 2-core machine the first epoch can take minutes
    while not history.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    # Interrupt during training (an epoch is done), the moment a user's Ctrl-C is about; a signal during
    # start-up would test something else.
    assert history.exists() and proc.poll() is None, "the run did not reach its first epoch"
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, f"rc {proc.returncode}: {err[-2000:]}"
    assert "interrupted" in err and "rerun the same command" in err
    assert "Traceback" not in err
    status = runs.read_json(history.parent / "status.json")
    assert status["status"] == runs.STATUS_RUNNING  # resumable, not failed


# --------------------------------------------------------------------------- 9, 10. every swept value
@pytest.mark.reliability
def test_every_swept_value_is_checked_before_anything_trains(tmp_path, cache_dir, capsys):
    smoke = [o for o in SMOKE_OVERRIDES if not o.startswith("data.image_size=")]
    code = cli(["-m", *smoke, "trainer.epochs=1", "optim.lr=0.1,abc", "data.image_size=32,100000",
                f"paths.results_dir={tmp_path / 'results'}", f"paths.cache_dir={cache_dir}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "optim.lr='abc' is not valid" in err and "data.image_size=100000 is not valid" in err
    assert "nothing was trained" in err and not (tmp_path / "results").exists()


@pytest.mark.fidelity
def test_hydra_main_returns_the_validation_number_of_select_by(make_cfg):
    from bench.cli.train import hydra_main

    cfg = make_cfg("trainer.select_by=val_macro_f1", "trainer.epochs=1")
    returned = hydra_main.__wrapped__(cfg)
    run = runs.RunDir.for_run(runs.experiment_dir(cfg.paths.results_dir, cfg.experiment_name), "simple_cnn", 0)
    pred = pd.read_csv(run.predictions("val"))
    present = sorted(set(pred["label"]))
    expected = f1_score(pred["label"], pred["predicted"], labels=present, average="macro", zero_division=0)
    assert returned == pytest.approx(expected)


def test_cli_refuses_to_start_when_preflight_fails(tmp_path, capsys):
    code = cli(["data=imagefolder", f"data.root={tmp_path / 'nope'}", f"paths.results_dir={tmp_path}",
                "model.pretrained=false", "model=simple_cnn"])
    assert code == 2
    assert "nothing was trained" in capsys.readouterr().err
    assert not any(tmp_path.glob("*/runs"))
