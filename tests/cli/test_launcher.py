"""The Slurm path (conf/hydra/launcher/slurm.yaml) exercised with submitit's local executor.

``hydra/launcher=local`` goes through the same hydra-submitit-launcher code as
``hydra/launcher=slurm``: the job is pickled, runs in another process, writes its run
folder, and its return value comes back through a submitit result file. Checked here on
the real console script: a two-model sweep completes, and the same command again retrains
nothing (what a requeued or resubmitted array relies on).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench import runs

from tests.helpers import SMOKE_OVERRIDES

pytest.importorskip(
    "hydra_plugins.hydra_submitit_launcher",
    reason="hydra-submitit-launcher is not installed (pip install -e '.[dev]' or '.[slurm]')",
)

MODELS = ("simple_cnn", "squeezenet1_1")


def _bench_train() -> list[str]:
    """The venv's console script next to this interpreter, else the same entry point via -c."""
    script = Path(sys.executable).with_name("bench-train")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from bench.cli.train import cli; sys.exit(cli())"]


def _sweep(results: Path, cache: Path, sweep_dir: Path, cwd: Path) -> subprocess.CompletedProcess:
    args = [
        "-m",
        "hydra/launcher=local",
        f"model={','.join(MODELS)}",
        *[o for o in SMOKE_OVERRIDES if not o.startswith("model=")],
        "trainer.epochs=1",
        "trainer.max_batches=2",
        "trainer.num_threads=1",  # two jobs at once on a small CI machine
        f"paths.results_dir={results}",
        f"paths.cache_dir={cache}",
        f"hydra.sweep.dir={sweep_dir}",  # logs only; not part of a run's identity
    ]
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    return subprocess.run(_bench_train() + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _check(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def _submitit_results(sweep_dir: Path) -> list[Path]:
    return sorted((sweep_dir / ".submitit").glob("*/*_result.pkl"))


@pytest.mark.slow
def test_submitit_sweep_completes_then_skips(tmp_path, cache_dir):
    from bench.data.synthetic import synthetic_root

    # Both jobs start at once; draw the shared synthetic dataset first, since its
    # generator is not safe against two processes creating the same cache folder.
    synthetic_root(cache_dir / "datasets", n_per_class=30, image_size=48, seed=0)  # as build_data names it
    results = tmp_path / "results"
    exp_dir = results / "synthetic"

    first = _sweep(results, cache_dir, tmp_path / "sweep1", tmp_path)
    _check(first)
    # The jobs ran out of process, through submitit: one result file per job.
    assert len(_submitit_results(tmp_path / "sweep1")) == len(MODELS)
    mtimes = {}
    for model in MODELS:
        rd = runs.RunDir.for_run(exp_dir, model, 0)
        status = json.loads(rd.status.read_text())
        assert status["status"] == runs.STATUS_COMPLETED, (model, status)
        assert rd.metrics.exists() and rd.last_ckpt.exists()
        mtimes[model] = rd.metrics.stat().st_mtime_ns
    board = pd.read_csv(exp_dir / "leaderboard.csv")
    assert sorted(board["model"]) == sorted(MODELS)
    assert set(board["status"]) == {runs.STATUS_COMPLETED}

    # The same command again (a resubmitted array): every run is skipped, nothing retrains.
    second = _sweep(results, cache_dir, tmp_path / "sweep2", tmp_path)
    _check(second)
    assert len(_submitit_results(tmp_path / "sweep2")) == len(MODELS)
    for num, model in enumerate(MODELS):
        rd = runs.RunDir.for_run(exp_dir, model, 0)
        assert rd.metrics.stat().st_mtime_ns == mtimes[model], f"{model} was retrained"
        assert json.loads(rd.status.read_text())["status"] == runs.STATUS_COMPLETED
        job_log = (tmp_path / "sweep2" / str(num) / "train.log").read_text()
        assert "already completed with this config, skipped" in job_log, job_log
    assert sorted(pd.read_csv(exp_dir / "leaderboard.csv")["model"]) == sorted(MODELS)
