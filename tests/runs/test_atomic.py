"""Atomic writes (bench.runs.atomic): a failed or interrupted write leaves the old file and no
temporary, and the temporaries of killed writers (of a run, of a store build) are removed on the
next start, those of live writers and other machines kept."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import runs
from bench.runs import disk_errors as write_errors, atomic
from bench.training import run_training as train


# --------------------------------------------------------------------------- 6. temporaries of killed processes
@pytest.mark.reliability
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


@pytest.mark.reliability
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


# --------------------------------------------------------------------------- crash safety of writes
def _boom(*_args, **_kwargs):
    raise OSError(28, "No space left on device (simulated)")


@pytest.mark.known_answer
@pytest.mark.parametrize("writer", ["json", "text", "csv", "torch"])
def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, writer):
    import pandas as pd

    target = tmp_path / f"result.{writer}"
    write = {
        "json": lambda value: runs.write_json_atomic(target, {"value": value}),
        "text": lambda value: runs.write_text_atomic(target, f"value {value}\n"),
        "csv": lambda value: runs.write_csv_atomic(target, pd.DataFrame({"value": [value] * 3})),
        "torch": lambda value: write_errors.save_torch_atomic(target, {"value": torch.full((256,), float(value))}),
    }[writer]
    write(1)
    before = target.read_bytes()
    # The failure comes after the new bytes were written (fsync), or while torch writes them.
    monkeypatch.setattr(atomic.os, "fsync", _boom)
    if writer == "torch":
        monkeypatch.setattr(torch, "save", lambda obj, fh, *a, **k: (fh.write(b"partial"), _boom()))
    with pytest.raises(OSError, match="simulated"):
        write(2)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


@pytest.mark.known_answer
def test_an_interrupt_inside_an_atomic_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "status.json"
    runs.write_json_atomic(target, {"status": "running"})
    before = target.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with runs.atomic_path(target) as tmp:
            tmp.write_text('{"status": "compl')
            raise KeyboardInterrupt
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]
