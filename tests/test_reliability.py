"""Nothing lost, nothing silently wrong: the faults an attack on a sweep found (issue 15).

Each test reproduces one defect: concurrent runs, corrupt results, full and read-only disks,
killed processes, Ctrl-C, class subsets, sweeps over split settings. Faults are simulated with
monkeypatched writes and disk readings, and with real subprocesses that are killed.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.results import leaderboard as lb
from bench import runs
from bench.runs import disk_errors as write_errors
from bench.runs import folder as run_folder
from bench.preflight import plan_runs, preflight
from bench.training import run_training as train

from .conftest import SMOKE_OVERRIDES


def _run_dir(out) -> runs.RunDir:
    return runs.RunDir(Path(out["run_dir"]))


# --------------------------------------------------------------------------- 2. one process per run folder
def test_a_run_folder_in_use_is_never_taken_over(make_cfg):
    first = train(make_cfg("trainer.epochs=1"))
    rd = _run_dir(first)
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
def test_a_corrupt_metrics_file_is_named_then_rewritten_from_the_checkpoints(make_cfg, caplog):
    cfg = make_cfg("trainer.epochs=2", "trainer.checkpoint_every_s=0")
    out = train(cfg)
    rd = _run_dir(out)
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


# --------------------------------------------------------------------------- 5. a full disk
def _disk_with(free_bytes):
    import shutil

    real = shutil.disk_usage

    def usage(path):
        u = real(path)
        return type(u)(u.total, u.total - free_bytes, free_bytes)

    return usage


def test_a_full_disk_is_said_in_one_sentence_and_earlier_results_stay(make_cfg, monkeypatch):
    import shutil

    first = train(make_cfg("trainer.epochs=1", "experiment_name=keep"))
    kept = _run_dir(first).metrics.read_bytes()

    def torch_disk_full(*a, **k):  # what torch.save says when the disk fills up
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 1728 vs 1622")

    monkeypatch.setattr(write_errors, "save_torch_atomic", torch_disk_full)
    monkeypatch.setattr(shutil, "disk_usage", _disk_with(3 * 2**20))
    out = train(make_cfg("trainer.epochs=1", "experiment_name=full"))
    assert out["status"] == "failed" and out["error"].startswith("disk full at ")
    assert "3 MB free" in out["error"] and "rerun the same command to resume" in out["error"]
    assert runs.read_json(_run_dir(out).status)["error"] == out["error"]
    assert _run_dir(first).metrics.read_bytes() == kept


def test_a_full_disk_says_how_much_the_checkpoint_needed(make_cfg, monkeypatch):
    import torch

    from bench.models import create_model

    def no_space(*a, **k):  # torch.save itself fails: the disk filled up under the checkpoint
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    out = train(make_cfg("trainer.epochs=1"))
    # best.pt is written first: the weights of simple_cnn with 8 outputs (the synthetic classes).
    weights = create_model("simple_cnn", num_classes=8, pretrained=False).state_dict().values()
    need_mb = sum(t.numel() * t.element_size() for t in weights) / 2**20
    assert out["status"] == "failed" and out["error"].startswith("disk full at ")
    assert f"MB free, {need_mb:.1f} MB needed to write best.pt) while writing" in out["error"], out["error"]


def test_a_disk_too_full_to_record_the_failure_still_gives_one_message(make_cfg, monkeypatch):
    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(write_errors, "save_torch_atomic", no_space)
    monkeypatch.setattr(run_folder, "write_text_atomic", no_space)  # error.log cannot be written either
    out = train(make_cfg("trainer.epochs=1"))  # returns: no chain of tracebacks
    assert out["status"] == "failed" and out["error"].startswith("disk full at ")
    assert "the failure could not be recorded" in out["error"]


def test_the_preflight_counts_the_checkpoint_rewrite(tmp_path, monkeypatch):
    import bench.preflight.resources as pf

    monkeypatch.setattr(pf, "_param_count", lambda name, spec: 10**8)
    report = preflight(plan_runs(["-m", "model=resnet18,vgg11", "seed=0,1", "model.pretrained=false",
                                  f"paths.results_dir={tmp_path}"]))
    # 2 models x 2 seeds x 12 bytes, plus one rewrite of the largest (12 bytes): 60 bytes/param.
    expected = f"checkpoints need about {60 * 10**8 / 2**30:.1f} GiB"
    assert any(expected in n for n in report.notes + report.problems), report.format()


# --------------------------------------------------------------------------- 6. temporaries of killed processes
def test_temporaries_of_killed_writers_are_removed_on_the_next_start(make_cfg, tmp_path):
    cfg = make_cfg("trainer.epochs=1", "experiment_name=tmp")
    rd = runs.RunDir.for_run(Path(cfg.paths.results_dir) / "tmp", "simple_cnn", 0)
    # A process killed in the middle of an atomic write of last.pt.
    code = ("import os\nfrom bench.runs import atomic_path\n"
            f"with atomic_path({str(rd.last_ckpt)!r}) as tmp:\n"
            "    tmp.write_bytes(b'x' * 1000)\n    os.kill(os.getpid(), 9)\n")
    subprocess.run([sys.executable, "-c", code], check=False)
    leftovers = list(rd.root.glob(".last.pt.*.tmp"))
    assert len(leftovers) == 1
    live = rd.root / f".best.pt.{socket.gethostname().replace('.', '_')}~{os.getpid()}.abcd.tmp"
    live.write_bytes(b"a write in progress by a live process")
    assert train(cfg)["status"] == "completed"
    assert not leftovers[0].exists() and live.exists()  # the dead writer's file only
    live.unlink()


def test_a_killed_store_build_leaves_nothing_for_good(tmp_path):
    from bench.runs import remove_stale_temporaries

    stores = tmp_path / "stores"
    stores.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = stores / f".0123abcd.npy.{socket.gethostname().replace('.', '_')}~{dead.pid}.xyz.tmp"
    stale.write_bytes(b"\0" * 4096)
    other_host = stores / f".0123abcd.npy.othernode~{dead.pid}.xyz.tmp"  # shared cache, another machine
    other_host.write_bytes(b"\0")
    assert remove_stale_temporaries(stores) == [stale]
    assert not stale.exists() and other_host.exists()


# --------------------------------------------------------------------------- 7. Ctrl-C
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


# --------------------------------------------------------------------------- 8, 9. disks the preflight must see
def test_a_read_only_results_folder_stops_the_preflight(tmp_path, monkeypatch):
    import tempfile

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    report = preflight(plan_runs(["model=simple_cnn", "model.pretrained=false", f"paths.results_dir={tmp_path}"]))
    assert any("is not writable" in p and "Read-only file system" in p for p in report.problems), report.format()
    assert not any("ok: disk" in n for n in report.format().splitlines())


def test_a_store_that_would_not_fit_the_disk_stops_the_preflight(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", _disk_with(50 * 2**20))
    report = preflight(plan_runs(["model=simple_cnn", "model.pretrained=false", "data.image_size=2048",
                                  f"paths.results_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}"]))
    # 1,600 synthetic images x 2048 x 2048 x 3 bytes: about 18.8 GiB for the decoded-image store.
    assert any("decoded images" in p and "18.8 GiB" in p for p in report.problems), report.format()


# --------------------------------------------------------------------------- 9, 10. every swept value
def test_every_swept_value_is_checked_before_anything_trains(tmp_path, cache_dir, capsys):
    from bench.cli.train import cli

    smoke = [o for o in SMOKE_OVERRIDES if not o.startswith("data.image_size=")]
    code = cli(["-m", *smoke, "trainer.epochs=1", "optim.lr=0.1,abc", "data.image_size=32,100000",
                f"paths.results_dir={tmp_path / 'results'}", f"paths.cache_dir={cache_dir}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "optim.lr='abc' is not valid" in err and "data.image_size=100000 is not valid" in err
    assert "nothing was trained" in err and not (tmp_path / "results").exists()


def test_a_swept_value_that_does_not_compose_is_named_by_the_preflight(tmp_path):
    report = preflight(plan_runs(["-m", "model=simple_cnn", "model.pretrained=false", "trainer.batch_size=32,abc",
                                  f"paths.results_dir={tmp_path}"]))
    assert any("trainer.batch_size=abc" in p and "does not compose" in p for p in report.problems), report.format()


def test_a_swept_image_size_whose_store_would_not_fit_stops_the_preflight(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", _disk_with(50 * 2**20))
    report = preflight(plan_runs(["-m", "model=simple_cnn", "model.pretrained=false", "data.image_size=32,2048",
                                  f"paths.results_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}"]))
    # 1,600 synthetic images, a store at 32 px and one at 2048 px, 3 bytes a pixel.
    need = 1600 * 3 * (32 * 32 + 2048 * 2048)
    assert any("decoded images" in p and "32 px, 2048 px" in p and f"{need / 2**30:.1f} GiB" in p
               for p in report.problems), report.format()


# --------------------------------------------------------------------------- 1. sweeps over the split
def test_a_sweep_over_split_seeds_needs_an_experiment_per_split(tmp_path):
    args = ["-m", "data.split_seed=0,1,2", "model=simple_cnn", "model.pretrained=false",
            f"paths.results_dir={tmp_path}"]
    report = preflight(plan_runs(args))
    assert any("data.split_seed is swept (0, 1, 2)" in p and "experiment_name=synthetic_split${data.split_seed}" in p
               for p in report.problems)
    ok = preflight(plan_runs([*args, "experiment_name=pbc_split${data.split_seed}"]))
    assert not any("is swept" in p for p in ok.problems)


# --------------------------------------------------------------------------- 11. a run on a class subset
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
