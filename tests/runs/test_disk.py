"""A full disk in one message (bench.runs.disk_errors): earlier results stay, the message says how
much the checkpoint needed, even a failure that cannot be recorded gives one sentence. The faults
are simulated with monkeypatched writes and disk readings."""

from __future__ import annotations

import errno

import pytest

from bench import runs
from bench.runs import disk_errors as write_errors, folder as run_folder
from bench.training import run_training as train

from tests.helpers import disk_with, run_dir_of

pytestmark = pytest.mark.reliability


def test_a_full_disk_is_said_in_one_sentence_and_earlier_results_stay(make_cfg, monkeypatch):
    import shutil

    first = train(make_cfg("trainer.epochs=1", "experiment_name=keep"))
    kept = run_dir_of(first).metrics.read_bytes()

    def torch_disk_full(*a, **k):  # what torch.save says when the disk fills up
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 1728 vs 1622")

    monkeypatch.setattr(write_errors, "save_torch_atomic", torch_disk_full)
    monkeypatch.setattr(shutil, "disk_usage", disk_with(3 * 2**20))
    out = train(make_cfg("trainer.epochs=1", "experiment_name=full"))
    assert out["status"] == "failed" and out["error"].startswith("disk full at ")
    assert "3 MB free" in out["error"] and "rerun the same command to resume" in out["error"]
    assert runs.read_json(run_dir_of(out).status)["error"] == out["error"]
    assert run_dir_of(first).metrics.read_bytes() == kept


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
