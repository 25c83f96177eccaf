"""The overnight sweep: the real command, failure isolation, resume after SIGKILL, preflight."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench import runs
from bench.models import register_model
from bench.preflight import plan_runs, preflight
from bench.cli.train import cli
from bench.training import run_training as train

from .conftest import SMOKE_OVERRIDES


def _cli_args(tmp_path, cache_dir, *extra):
    return [*SMOKE_OVERRIDES, f"paths.results_dir={tmp_path / 'results'}", f"paths.cache_dir={cache_dir}", *extra]


class _Exploding(torch.nn.Module):
    """A model that fails at its first forward pass, as a broken architecture would at run time."""

    def __init__(self, num_classes):
        super().__init__()
        self.fc = torch.nn.Linear(3, num_classes)

    def forward(self, x):
        raise RuntimeError("exploding_net always fails")


@pytest.fixture
def exploding_net(monkeypatch):
    """Register a failing model for one test only (the registry is restored afterwards)."""
    from bench.models import _registry

    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))
    register_model("exploding_net", input_size=32, min_input_size=8, family="test", source="custom")(
        lambda num_classes, pretrained=False: _Exploding(num_classes)
    )
    return "exploding_net"


def test_sweep_isolates_a_failing_model_and_exits_nonzero(tmp_path, cache_dir, capsys, exploding_net):
    args = _cli_args(tmp_path, cache_dir, "-m", "model=simple_cnn,exploding_net,squeezenet1_1",
                     "trainer.epochs=1", "trainer.max_batches=2")
    assert cli(args) == 1
    captured = capsys.readouterr()
    assert "1 run(s) failed" in captured.err and "exploding_net always fails" in captured.err
    assert "simple_cnn" in captured.out and "squeezenet1_1" in captured.out  # the leaderboard is printed
    board = pd.read_csv(tmp_path / "results" / "synthetic" / "leaderboard.csv").set_index("model")
    assert board.loc["exploding_net", "status"] == "failed"
    assert "exploding_net always fails" in board.loc["exploding_net", "error"]
    assert pd.isna(board.loc["exploding_net", "rank"])
    assert (board.loc[["simple_cnn", "squeezenet1_1"], "status"] == "completed").all()


def test_second_invocation_of_a_finished_sweep_trains_nothing(tmp_path, cache_dir, capsys):
    args = _cli_args(tmp_path, cache_dir, "-m", "model=simple_cnn,squeezenet1_1", "seed=0,1",
                     "trainer.epochs=1", "trainer.max_batches=1")
    assert cli(args) == 0
    exp = tmp_path / "results" / "synthetic"
    stamps = {p: p.stat().st_mtime_ns for p in exp.glob("runs/*/seed*/metrics.json")}
    assert len(stamps) == 4
    assert cli(args) == 0
    assert {p: p.stat().st_mtime_ns for p in exp.glob("runs/*/seed*/metrics.json")} == stamps
    board = pd.read_csv(exp / "leaderboard.csv")
    assert len(board) == 4 and (board["status"] == "completed").all()
    summary = pd.read_csv(exp / "summary.csv")
    assert set(summary["model"]) == {"simple_cnn", "squeezenet1_1"}


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


# --------------------------------------------------------------------------- resume after SIGKILL
def _train_cmd(results: Path, cache_dir: Path) -> list[str]:
    return [
        sys.executable, "-c", "from bench.cli.train import cli; raise SystemExit(cli())",
        *SMOKE_OVERRIDES, "trainer.epochs=4", "data.synthetic_n_per_class=60", "trainer.checkpoint_every_s=0",
        f"paths.results_dir={results}", f"paths.cache_dir={cache_dir}",
    ]


@pytest.mark.slow
def test_a_run_killed_mid_training_resumes_to_the_same_metrics(tmp_path, cache_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same threads in every process: bitwise-equal math
    reference = tmp_path / "uninterrupted"
    subprocess.run(_train_cmd(reference, cache_dir), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    run_dir = killed / "synthetic" / "runs" / "simple_cnn" / "seed0"
    proc = subprocess.Popen(_train_cmd(killed, cache_dir), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run_dir / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    status = runs.read_json(run_dir / "status.json")
    assert status["status"] == "running" and not (run_dir / "metrics.json").exists()
    done_before = len(pd.read_csv(run_dir / "history.csv"))
    assert 1 <= done_before < 4

    subprocess.run(_train_cmd(killed, cache_dir), check=True, env=env, capture_output=True)
    a = runs.read_json(reference / "synthetic" / "runs" / "simple_cnn" / "seed0" / "metrics.json")
    b = runs.read_json(run_dir / "metrics.json")
    for key in ("val", "test", "best_epoch", "epochs_run"):
        assert a[key] == b[key], key
    ha = pd.read_csv(reference / "synthetic" / "runs" / "simple_cnn" / "seed0" / "history.csv")
    hb = pd.read_csv(run_dir / "history.csv")
    pd.testing.assert_frame_equal(ha[["train_loss", "val_acc"]], hb[["train_loss", "val_acc"]])


# --------------------------------------------------------------------------- preflight
def test_preflight_lists_every_problem_at_once(tmp_path, monkeypatch):
    plan = plan_runs(["-m", "data=imagefolder", f"data.root={tmp_path / 'missing'}", "model=resnet18,inception_v3",
                      "data.image_size=64", "model.pretrained=true", f"paths.results_dir={tmp_path}",
                      "data.augment.interpolation=bicubic"])
    assert plan.models == ["resnet18", "inception_v3"]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache
    import bench.preflight.models as pf

    monkeypatch.setattr(pf, "_REACHABLE", {"download.pytorch.org": False})  # offline, deterministically
    report = preflight(plan)
    text = report.format()
    assert not report.ok
    assert "data.root" in text  # the missing folder
    assert "inception_v3: data.image_size=64" in text  # too small for inception's aux head
    assert "resnet18 (resnet18-" in text and "model.pretrained=false" in text
    assert "data.augment.interpolation='bicubic'" in text


def test_preflight_checks_memory_for_the_decoded_images(tmp_path, monkeypatch):
    import bench.data.store as store

    def plan(store_mode):
        return plan_runs(["-m", "model=simple_cnn,resnet18", "model.pretrained=false", "data.synthetic_n_per_class=100",
                          f"data.store={store_mode}", f"paths.results_dir={tmp_path}"])

    monkeypatch.setattr(store, "available_memory", lambda: 8 * 2**20)  # 8 MiB free
    # 800 images at resnet18's 224 px: 120 MB of uint8, twice that budgeted.
    forced = preflight(plan("memory"))
    assert not forced.ok
    assert "memory: 800 decoded images at 224 px need about 230 MiB, 8 MiB available" in forced.format()
    assert "data.store=auto" in forced.format()
    auto = preflight(plan("auto"))  # reads from the memory-mapped store instead, and says so
    assert auto.ok and any("memory-mapped" in w for w in auto.warnings)
    assert not preflight(plan("bogus")).ok
    monkeypatch.setattr(store, "available_memory", lambda: 64 * 2**30)
    roomy = preflight(plan("memory"))
    assert roomy.ok and any(n.startswith("memory:") for n in roomy.notes)


def test_plan_expands_the_experiments_sweep():
    plan = plan_runs(["-m", "experiment=gavas2021", "data.root=/data", "seed=0,1"])
    assert len(plan.models) == 27 and plan.seeds == [0, 1] and plan.n_runs == 54
    single = plan_runs(["model=vgg19"])
    assert single.models == ["vgg19"] and not single.multirun


def test_cli_refuses_to_start_when_preflight_fails(tmp_path, capsys):
    code = cli(["data=imagefolder", f"data.root={tmp_path / 'nope'}", f"paths.results_dir={tmp_path}",
                "model.pretrained=false", "model=simple_cnn"])
    assert code == 2
    assert "nothing was trained" in capsys.readouterr().err
    assert not any(tmp_path.glob("*/runs"))


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


def test_the_plan_counts_every_combination_the_sweeper_starts():
    # models x seeds x learning rates: the progress line and the disk check count 2 x 2 x 3 runs
    plan = plan_runs(["-m", "model=simple_cnn,squeezenet1_1", "seed=0,1", "optim.lr=0.1,0.01,0.001"])
    assert plan.n_runs == 12
    assert plan_runs(["model=simple_cnn", "optim.lr=0.1"]).n_runs == 1
