"""The rules of a training run, each driven to a case where getting it wrong changes a number.

Short smoke runs have best epoch == last epoch and never reach the learning-rate step, so
the rules below are forced: a scripted validation curve (the evaluation is wrapped and its
accuracy replaced epoch by epoch), a short ``step_size``, and an in-process interrupt.
Every expectation is written out here, not read from the code under test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench import runs
from bench.results import leaderboard as lb
from bench.training import classifier as train_mod, run_training as train


def _scripted_evaluate(monkeypatch, val_accs: list[float]):
    """Replace the validation accuracy of the first ``len(val_accs)`` evaluations (one per epoch)
    by ``val_accs`` and keep a copy of the weights each was computed with. Later calls (the
    final test evaluation) are the real thing."""
    real = train_mod.evaluate
    seen: list[dict] = []

    def scripted(model, batches, criterion, **kw):
        result = real(model, batches, criterion, **kw)
        if len(seen) < len(val_accs):
            seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            result = {**result, "acc": val_accs[len(seen) - 1]}
        return result

    monkeypatch.setattr(train_mod, "evaluate", scripted)
    return seen


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_best_epoch_is_the_first_best_on_validation_and_test_uses_its_weights(make_cfg, monkeypatch):
    # Validation accuracy 0.5, 0.7, 0.7, 0.6: the best epoch is 2 (a tie keeps the earlier one),
    # and the last epoch (4) is worse, so taking the last weights would be visible.
    snapshots = _scripted_evaluate(monkeypatch, [0.5, 0.7, 0.7, 0.6])
    out = train(make_cfg("trainer.epochs=4", "trainer.checkpoint_every_s=0", "optim.lr=0.05"))
    assert out["status"] == "completed"
    rd = runs.RunDir(Path(out["run_dir"]))
    metrics = runs.read_json(rd.metrics)
    assert metrics["best_epoch"] == 2 and metrics["epochs_run"] == 4
    assert pd.read_csv(rd.history)["val_acc"].tolist() == [0.5, 0.7, 0.7, 0.6]

    best = torch.load(rd.best_ckpt, map_location="cpu", weights_only=True)
    assert best["epoch"] == 2 and best["val_score"] == 0.7 and best["select_by"] == "val_acc"
    assert _same_weights(best["model"], snapshots[1])
    assert not _same_weights(best["model"], snapshots[3])  # training moved on after epoch 2

    # The test predictions are exactly those of best.pt, reproduced outside the run by bench-predict's code.
    from bench.predict.checkpoints import load_checkpoint
    from bench.predict.images import predict_probs

    frame = pd.read_csv(rd.predictions("test"))
    classes = metrics["classes"]
    files = [Path(metrics["data_root"]) / p for p in frame["path"]]
    probs, readable, _ = predict_probs([load_checkpoint(rd.best_ckpt)], files, batch_size=7)
    assert readable.all()
    # Within float32 noise: the run evaluated in batches of 128, this in batches of 7, and with one
    # CPU thread torch's convolutions sum in another order per batch size (2.8e-6 seen); another
    # checkpoint's probabilities differ by orders of magnitude more.
    np.testing.assert_allclose(probs[0], frame[[f"prob_{c}" for c in classes]].to_numpy(), atol=1e-5)
    assert [classes[i] for i in probs[0].argmax(1)] == frame["predicted"].tolist()
    # ... and metrics.json's test numbers are those predictions scored against the labels.
    assert metrics["test"]["accuracy"] == pytest.approx(float((frame["label"] == frame["predicted"]).mean()))


def test_validation_metrics_are_those_of_the_best_epoch(make_cfg, monkeypatch):
    # The best epoch is the first: metrics.json's validation numbers must be epoch 1's
    # predictions, recomputed here from the weights seen at epoch 1.
    snapshots = _scripted_evaluate(monkeypatch, [0.9, 0.2, 0.3])
    out = train(make_cfg("trainer.epochs=3", "trainer.checkpoint_every_s=0", "optim.lr=0.05"))
    rd = runs.RunDir(Path(out["run_dir"]))
    metrics = runs.read_json(rd.metrics)
    assert metrics["best_epoch"] == 1
    assert _same_weights(torch.load(rd.best_ckpt, weights_only=True)["model"], snapshots[0])
    frame = pd.read_csv(rd.predictions("val"))
    from bench.predict.checkpoints import load_checkpoint
    from bench.predict.images import predict_probs

    probs, _, _ = predict_probs([load_checkpoint(rd.best_ckpt)],
                                [Path(metrics["data_root"]) / p for p in frame["path"]])
    classes = metrics["classes"]
    # Within float32 noise: the run evaluated in batches of 128, this in batches of 7, and with one
    # CPU thread torch's convolutions sum in another order per batch size (2.8e-6 seen); another
    # checkpoint's probabilities differ by orders of magnitude more.
    np.testing.assert_allclose(probs[0], frame[[f"prob_{c}" for c in classes]].to_numpy(), atol=1e-5)


@pytest.mark.parametrize("step_size, expected", [
    (1, [1e-3, 1e-4, 1e-5]),
    (2, [1e-3, 1e-3, 1e-4, 1e-4, 1e-5]),
])
def test_learning_rate_follows_step_lr_once_per_epoch(make_cfg, step_size, expected):
    # The protocol: lr 1e-3, x0.1 every `step_size` epochs, stepped per epoch (never per batch).
    out = train(make_cfg(f"trainer.epochs={len(expected)}", f"sched.step_size={step_size}", "sched.gamma=0.1",
                         "optim.lr=0.001"))
    history = pd.read_csv(runs.RunDir(Path(out["run_dir"])).history)
    assert history["lr"].tolist() == pytest.approx(expected, rel=1e-9)


def test_the_optimizer_uses_the_logged_learning_rate(make_cfg, monkeypatch):
    # The lr column is read from the optimizer before each epoch; check that the optimizer
    # actually steps with it by recording param_groups at every optimizer.step().
    seen = []
    real_step = torch.optim.SGD.step

    def step(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    train(make_cfg("trainer.epochs=3", "sched.step_size=1", "optim.lr=0.001", "trainer.max_batches=2"))
    assert seen == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5], rel=1e-9)


# --------------------------------------------------------------------------- interrupt and resume
RESUME = ("trainer.epochs=4", "sched.step_size=3", "trainer.checkpoint_every_s=0", "optim.lr=0.01")


def _run_files(out) -> tuple[runs.RunDir, dict, pd.DataFrame]:
    rd = runs.RunDir(Path(out["run_dir"]))
    return rd, runs.read_json(rd.metrics), pd.read_csv(rd.history)


def test_an_interrupt_after_epoch_2_and_a_resume_equal_an_uninterrupted_run(make_cfg, monkeypatch):
    # step_size 3 with the cut after epoch 2: a resume that forgot the scheduler's position
    # would keep lr 1e-2 for epoch 4, one that forgot the momentum buffers would drift.
    whole = train(make_cfg(*RESUME, "experiment_name=whole"))

    real_epoch = train_mod.train_one_epoch
    calls = []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C during epoch 3
        return real_epoch(*a, **k)

    monkeypatch.setattr(train_mod, "train_one_epoch", interrupted)
    cfg = make_cfg(*RESUME, "experiment_name=cut")
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    rd_cut = runs.RunDir.for_run(Path(cfg.paths.results_dir) / "cut", cfg.model.name, cfg.seed)
    assert runs.read_json(rd_cut.status)["status"] == runs.STATUS_RUNNING
    saved = torch.load(rd_cut.last_ckpt, weights_only=True)
    assert saved["epoch"] == 2 and saved["scheduler"]["last_epoch"] == 2
    momentum_after_2 = {k: s["momentum_buffer"].clone() for k, s in saved["optimizer"]["state"].items()}

    monkeypatch.setattr(train_mod, "train_one_epoch", real_epoch)
    resumed_optimizer = {}
    real_load = torch.optim.SGD.load_state_dict

    def spy_load(self, state):
        real_load(self, state)
        resumed_optimizer.update({k: v["momentum_buffer"].clone() for k, v in self.state_dict()["state"].items()})

    monkeypatch.setattr(torch.optim.SGD, "load_state_dict", spy_load)
    resumed = train(cfg)
    assert resumed["status"] == runs.STATUS_COMPLETED
    # The resumed optimizer starts from the saved momentum buffers.
    assert resumed_optimizer.keys() == momentum_after_2.keys()
    assert all(torch.equal(resumed_optimizer[k], momentum_after_2[k]) for k in momentum_after_2)

    rd_a, m_a, h_a = _run_files(whole)
    rd_b, m_b, h_b = _run_files(resumed)
    assert h_b["lr"].tolist() == pytest.approx([1e-2, 1e-2, 1e-2, 1e-3], rel=1e-9)
    cols = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc"]
    pd.testing.assert_frame_equal(h_a[cols], h_b[cols])
    for name in ("last.pt", "best.pt"):
        a = torch.load(rd_a.root / name, weights_only=True)["model"]
        b = torch.load(rd_b.root / name, weights_only=True)["model"]
        assert _same_weights(a, b), name
    opt_a = torch.load(rd_a.last_ckpt, weights_only=True)["optimizer"]["state"]
    opt_b = torch.load(rd_b.last_ckpt, weights_only=True)["optimizer"]["state"]
    assert all(torch.equal(opt_a[k]["momentum_buffer"], opt_b[k]["momentum_buffer"]) for k in opt_a)
    for split in ("val", "test"):
        assert m_a[split] == m_b[split]
        pd.testing.assert_frame_equal(pd.read_csv(rd_a.predictions(split)), pd.read_csv(rd_b.predictions(split)))
    assert m_a["best_epoch"] == m_b["best_epoch"]


def test_the_training_loop_gets_the_models_aux_weight(make_cfg, monkeypatch):
    # A model whose spec says aux_weight 0.4 (inception_v3) must train with it: the loop is
    # given the registry's weight, not a default of 0.
    from dataclasses import replace

    from bench.models import get_model_spec

    real_spec, real_epoch = train_mod.get_model_spec, train_mod.train_one_epoch
    monkeypatch.setattr(train_mod, "get_model_spec", lambda name: replace(real_spec(name), aux_weight=0.4))
    weights = []

    def spy(*a, **k):
        weights.append(k["aux_weight"])
        return real_epoch(*a, **k)

    monkeypatch.setattr(train_mod, "train_one_epoch", spy)
    train(make_cfg("trainer.epochs=1", "trainer.max_batches=1"))
    assert weights == [0.4]
    assert get_model_spec("inception_v3").aux_weight == 0.4


# --------------------------------------------------------------------------- runs on imbalanced data
@pytest.mark.own_data
def test_select_by_balanced_accuracy_picks_another_epoch(make_cfg, monkeypatch):
    # Validation: 3 images of class 0, 1 of class 1. Epoch 1 predicts class 0 everywhere
    # (accuracy 3/4, balanced 1/2); epoch 2 gets one class-0 image wrong and the class-1 one
    # right (accuracy 3/4, balanced (2/3 + 1)/2 = 5/6); epoch 3 predicts class 1 everywhere.
    labels = np.array([0, 0, 0, 1])
    preds = [np.array([0, 0, 0, 0]), np.array([1, 0, 0, 1]), np.array([1, 1, 1, 1])]
    calls = []

    def scripted(model, batches, criterion, **kw):
        calls.append(1)
        if len(calls) > len(preds):
            return real(model, batches, criterion, **kw)
        p = preds[len(calls) - 1]
        probs = np.eye(8)[p]
        return {"loss": 1.0, "acc": float((p == labels).mean()), "n": 4, "labels": labels, "preds": p,
                "probs": probs, "seconds": 0.1, "img_s": 40.0}

    real = train_mod.evaluate
    monkeypatch.setattr(train_mod, "evaluate", scripted)
    by_acc = train(make_cfg("trainer.epochs=3", "experiment_name=acc"))
    calls.clear()
    by_bal = train(make_cfg("trainer.epochs=3", "trainer.select_by=val_balanced_acc", "experiment_name=bal"))
    m_acc = runs.read_json(Path(by_acc["run_dir"]) / "metrics.json")
    m_bal = runs.read_json(Path(by_bal["run_dir"]) / "metrics.json")
    assert m_acc["best_epoch"] == 1 and m_acc["select_by"] == "val_acc"  # the tie keeps the earlier epoch
    assert m_bal["best_epoch"] == 2 and m_bal["select_by"] == "val_balanced_acc"
    history = pd.read_csv(Path(by_bal["run_dir"]) / "history.csv")
    assert history["val_balanced_acc"].tolist() == pytest.approx([0.5, 5 / 6, 0.5])
    # Epoch 1 of the accuracy run predicted one class only: the run says so, by name.
    assert any("predicts 'basophil' for 100%" in w for w in m_acc["warnings"])
    board = lb.build_leaderboard(Path(by_acc["run_dir"]).parents[2])
    assert "predicts 'basophil'" in board.loc[0, "warnings"]


@pytest.mark.fidelity
def test_keras_decay_steps_the_learning_rate_every_iteration(make_cfg):
    # lr 0.01, decay 0.5, 2 optimizer steps per epoch: epochs start at t = 0, 2, 4 steps,
    # so lr = 0.01 / (1 + 0.5 t) = 0.01, 0.005, 0.00333...
    out = train(make_cfg("trainer.epochs=3", "trainer.max_batches=2", "sched=inverse_time", "sched.decay=0.5",
                         "trainer.sched_interval=step", "optim.lr=0.01"))
    history = pd.read_csv(runs.RunDir(Path(out["run_dir"])).history)
    assert history["lr"].tolist() == pytest.approx([0.01, 0.01 / 2, 0.01 / 3])


@pytest.mark.reliability
def test_the_schedulers_warning_mid_epoch_writes_that_epoch_and_hands_on_then_the_resume_equals_a_whole_run(
        make_cfg, monkeypatch):
    """SIGUSR2 during epoch 2 with no checkpoint due (cadence of an hour): epoch 2 finishes, best.pt and last.pt
    are written after it, then the handler it replaced runs (submitit's: requeue and exit; here one that records
    and exits). The requeued run resumes after epoch 2 and ends as an uninterrupted run does."""
    import os
    import signal

    settings = ("trainer.epochs=4", "sched.step_size=3", "optim.lr=0.01")
    whole = train(make_cfg(*settings, "experiment_name=whole", "trainer.checkpoint_every_s=0"))
    handed_on = []

    def scheduler_handler(signum, frame):  # what submitit does: requeue, then leave
        handed_on.append(signum)
        raise SystemExit(-1)

    real_epoch, calls = train_mod.train_one_epoch, []

    def warned(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGUSR2)  # mid-epoch 2
        return real_epoch(*a, **k)

    previous = signal.signal(signal.SIGUSR2, scheduler_handler)
    try:
        monkeypatch.setattr(train_mod, "train_one_epoch", warned)
        cfg = make_cfg(*settings, "experiment_name=warned", "trainer.checkpoint_every_s=3600")
        with pytest.raises(SystemExit):
            train(cfg)
        assert signal.getsignal(signal.SIGUSR2) is scheduler_handler  # put back before handing on
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert handed_on == [signal.SIGUSR2] and len(calls) == 2  # epoch 2 finished, epoch 3 never started
    rd = runs.RunDir.for_run(Path(cfg.paths.results_dir) / "warned", cfg.model.name, cfg.seed)
    assert torch.load(rd.last_ckpt, weights_only=True)["epoch"] == 2  # written though no write was due
    assert runs.read_json(rd.status)["status"] == runs.STATUS_RUNNING

    monkeypatch.setattr(train_mod, "train_one_epoch", real_epoch)
    resumed = train(cfg)
    _, m_a, h_a = _run_files(whole)
    _, m_b, h_b = _run_files(resumed)
    cols = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc"]
    pd.testing.assert_frame_equal(h_a[cols], h_b[cols])
    assert m_a["test"] == m_b["test"]
