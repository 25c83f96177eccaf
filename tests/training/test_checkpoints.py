"""Checkpoints (bench.training.checkpoints): written at most every checkpoint_every_s, an
unreadable last.pt means training again, and a rebuilt best.pt converts its input as its ImageNet
start did (detectors with frozen batch norm too)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench import runs
from bench.models import create_model
from bench.runs import disk_errors as write_errors
from bench.training import run_training as train


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


def test_a_detector_checkpoint_with_frozen_batchnorm_rebuilds(tmp_path):
    """Detectors started from COCO / ImageNet weights hold FrozenBatchNorm2d; best.pt rebuilds offline."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    from bench.training.checkpoints import rebuild_model

    torch.manual_seed(0)
    model = create_model("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=2, pretrained=False, image_size=64)
    for name, module in list(model.backbone.named_modules()):  # what torchvision does for a pretrained start
        if isinstance(module, torch.nn.BatchNorm2d):
            parent, _, child = name.rpartition(".")
            frozen = FrozenBatchNorm2d(module.num_features)
            frozen.running_mean.uniform_(-0.1, 0.1)
            setattr(model.backbone.get_submodule(parent) if parent else model.backbone, child, frozen)
    model.eval()
    ckpt = {"model": model.state_dict(), "model_name": "fasterrcnn_mobilenet_v3_large_320_fpn",
            "class_names": ["rbc", "wbc"], "input_size": 64, "task": "detection", "pretrained": True}
    rebuilt = rebuild_model(ckpt)
    x = [torch.rand(3, 64, 64)]
    with torch.no_grad():
        a, b = model.backbone.body(x[0][None]), rebuilt.backbone.body(x[0][None])
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name, pretrained, expected", [("inception_v3", True, True), ("googlenet", True, True),
                                                         ("inception_v3", False, False), ("resnet18", True, False)])
def test_a_rebuilt_checkpoint_converts_its_input_as_its_imagenet_start_did(name, pretrained, expected):
    # torchvision builds inception_v3 / googlenet with transform_input=True only with ImageNet
    # weights; every rebuild of a fine-tuned checkpoint (bench-predict, the two-level classifier)
    # must do the same, or its inputs are normalised the wrong way.
    from bench.training.checkpoints import rebuild_model

    torch.manual_seed(0)
    model = create_model(name, num_classes=3, pretrained=False)
    ckpt = {"model": model.state_dict(), "model_name": name, "class_names": ["a", "b", "c"], "pretrained": pretrained}
    rebuilt = rebuild_model(ckpt)
    assert getattr(rebuilt, "transform_input", False) is expected
    assert not rebuilt.training
