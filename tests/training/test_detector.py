"""A detector in the training loop (bench.training.detector): it resumes to the same weights and
keeps the first best validation mAP."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import runs

from tests.helpers import SMALL_DETECTOR as SMALL, compose_cfg


def test_a_detector_resumes_to_the_same_weights(tmp_path, cache_dir, monkeypatch):
    import torch

    from bench.training import detector as det_fit
    from bench.training import run_training

    whole = run_training(compose_cfg(*SMALL, f"paths.results_dir={tmp_path / 'a'}", f"paths.cache_dir={cache_dir}"))
    real, calls = det_fit._train_epoch, []

    def cut(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(det_fit, "_train_epoch", cut)
    cfg = compose_cfg(*SMALL, f"paths.results_dir={tmp_path / 'b'}", f"paths.cache_dir={cache_dir}")
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg)
    monkeypatch.setattr(det_fit, "_train_epoch", real)
    resumed = run_training(cfg)
    a = torch.load(Path(whole["run_dir"]) / "last.pt", weights_only=True)["model"]
    b = torch.load(Path(resumed["run_dir"]) / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert runs.read_json(Path(resumed["run_dir"]) / "metrics.json")["test"] == runs.read_json(
        Path(whole["run_dir"]) / "metrics.json")["test"]


def test_the_detectors_best_epoch_is_the_first_best_validation_map(tmp_path, cache_dir, monkeypatch):
    """Scripted validation mAP 0.2, 0.5, 0.5: the best epoch is 2 (a tie keeps the earlier) and best.pt
    holds epoch 2's weights, not the last epoch's."""
    import torch

    from bench.training import detector as det_fit
    from bench.training import run_training

    real, scripted, saved = det_fit.coco_metrics, iter([0.2, 0.5, 0.5]), {}
    real_epoch = det_fit.DetectorSession.epoch

    def scripted_metrics(gt, res, max_detections):
        out = real(gt, res, max_detections)
        value = next(scripted, None)  # the three epochs' validation, then the real final evaluation
        return out if value is None else {**out, "map": value}

    def remember(s, epoch, progress):
        out = real_epoch(s, epoch, progress)
        saved[epoch + 1] = {k: v.detach().clone() for k, v in s.model.state_dict().items()}
        return out

    monkeypatch.setattr(det_fit, "coco_metrics", scripted_metrics)
    monkeypatch.setattr(det_fit.DetectorSession, "epoch", remember)
    out = run_training(compose_cfg(*SMALL, "trainer.epochs=3", f"paths.results_dir={tmp_path}",
                                   f"paths.cache_dir={cache_dir}"))
    assert out["status"] == "completed", out.get("error")
    run_dir = Path(out["run_dir"])
    metrics = runs.read_json(run_dir / "metrics.json")
    assert metrics["best_epoch"] == 2
    best = torch.load(run_dir / "best.pt", weights_only=True)
    assert best["epoch"] == 2 and all(torch.equal(best["model"][k], saved[2][k]) for k in saved[2])
    assert not all(torch.equal(saved[2][k], saved[3][k]) for k in saved[2])  # epoch 3 did change the weights
