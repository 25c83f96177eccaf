"""A run folder's lifecycle (bench.runs.lifecycle): one process per folder, a killed holder's lock,
a corrupt metrics.json rewritten from the checkpoints, a changed config that never reuses the old
result."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench import runs
from bench.results import leaderboard as lb
from bench.training import run_training as train

from tests.helpers import run_dir_of


# --------------------------------------------------------------------------- 2. one process per run folder
@pytest.mark.reliability
def test_a_run_folder_in_use_is_never_taken_over(make_cfg):
    first = train(make_cfg("trainer.epochs=1"))
    rd = run_dir_of(first)
    before = rd.metrics.read_bytes()
    runs.RunDir.write_status(rd, runs.STATUS_RUNNING, config_hash=runs.read_json(rd.status)["config_hash"])
    with rd.lock():  # another process trains in this folder (a second open file: a second holder)
        same = train(make_cfg("trainer.epochs=1"))
        other = train(make_cfg("trainer.epochs=1", "optim.lr=0.5"))
    assert same["status"] == "skipped" and "being trained by" in same["note"]
    assert other["status"] == "failed" and "with another config; this run did not start" in other["error"]
    assert rd.metrics.read_bytes() == before and not (rd.root.parent / "replaced").exists()
    # The holder is gone (its lock died with it): the same command now simply goes on.
    assert train(make_cfg("trainer.epochs=1"))["status"] in ("completed", "skipped")


@pytest.mark.reliability
def test_a_killed_holder_leaves_no_lock_behind(make_cfg, tmp_path):
    cfg = make_cfg("trainer.epochs=1")
    rd = runs.RunDir.for_run(Path(cfg.paths.results_dir) / cfg.experiment_name, "simple_cnn", 0)
    code = ("import os, sys, time\nfrom bench.runs import RunDir\nfrom pathlib import Path\n"
            f"with RunDir(Path({str(rd.root)!r})).lock():\n    print('held', flush=True)\n    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (rd.root.parent / f".{rd.root.name}.lock").exists()  # the file stays; its lock does not
    assert train(cfg)["status"] == "completed"


# --------------------------------------------------------------------------- 4. a corrupt metrics.json
@pytest.mark.reliability
def test_a_corrupt_metrics_file_is_named_then_rewritten_from_the_checkpoints(make_cfg, caplog):
    cfg = make_cfg("trainer.epochs=2", "trainer.checkpoint_every_s=0")
    out = train(cfg)
    rd = run_dir_of(out)
    good = runs.read_json(rd.metrics)
    rd.metrics.write_text('{"val": {"accuracy": 0.9')  # damaged after the run finished
    board = lb.build_leaderboard(rd.root.parents[2])
    row = board[board["model"] == "simple_cnn"].iloc[0]
    assert row["status"] == "unreadable" and str(rd.metrics) in row["error"]
    again = train(cfg)  # the same command: no traceback, the run is evaluated again
    assert again["status"] == "completed"
    assert "is unreadable" in caplog.text
    fixed = runs.read_json(rd.metrics)
    assert fixed["val"] == good["val"] and fixed["test"] == good["test"] and fixed["epochs_run"] == 2


def test_a_changed_config_never_reuses_the_old_result(make_cfg, tmp_path):
    train(make_cfg("trainer.epochs=1", "trainer.max_batches=1"))
    out = train(make_cfg("trainer.epochs=1", "trainer.max_batches=1", "optim.lr=0.5"))
    assert out["status"] == "completed"
    replaced = list((tmp_path / "results" / "synthetic" / "runs" / "simple_cnn" / "replaced").iterdir())
    assert len(replaced) == 1 and (replaced[0] / "metrics.json").exists()
