"""Against a real Slurm (``make cluster-test`` starts one on this machine: tools/local_slurm.py).

The quickstart sweep through ``hydra/launcher=slurm`` (hydra-submitit-launcher, sbatch) runs as one job
array, one task per model, and gives the same leaderboard and ensemble as the same sweep run locally.
Skipped, with the reason, when ``SLURM_CONF`` names no running cluster.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench import runs


def cluster_state() -> str | None:
    """Why there is no cluster to test against (None: there is one)."""
    if not os.environ.get("SLURM_CONF"):
        return "no SLURM_CONF: run `make cluster-test`, which starts a local Slurm cluster"
    if not shutil.which("sinfo"):
        return "sinfo is not installed"
    done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    states = done.stdout.split()
    if done.returncode or not any(s in ("idle", "mixed", "allocated") for s in states):
        return f"the cluster of SLURM_CONF={os.environ['SLURM_CONF']} is not up (sinfo: {done.stderr.strip() or states})"
    return None


pytestmark = [pytest.mark.cluster, pytest.mark.skipif(cluster_state() is not None, reason=str(cluster_state()))]
pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher is not installed")

MODELS = ("simple_cnn", "mobilenet_v2_050")
SHRUNK = ["experiment=quickstart", f"model={','.join(MODELS)}", "data.synthetic_n_per_class=30",
          "data.synthetic_size=48", "data.image_size=32", "trainer.epochs=2", "trainer.max_batches=3",
          "trainer.num_threads=1", "trainer.device=cpu", "data.decode_workers=1", "trainer.progress=false"]
SLURM = ["hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=0",
         "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=15",
         "hydra.launcher.array_parallelism=2"]


def bench(command: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name(f"bench-{command}")
    proc = subprocess.run([str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == 0, f"bench-{command} exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_the_quickstart_sweep_runs_as_a_job_array_and_equals_the_local_sweep(tmp_path):
    from bench.data.synthetic import synthetic_root

    cache = tmp_path / "cache"
    synthetic_root(cache / "datasets", n_per_class=30, image_size=48, seed=0)  # not drawn by two tasks at once
    common = [*SHRUNK, f"paths.cache_dir={cache}"]
    bench("train", "-m", *common, *SLURM, f"paths.results_dir={tmp_path / 'slurm'}",
          f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    bench("train", "-m", *common, f"paths.results_dir={tmp_path / 'local'}",
          f"hydra.sweep.dir={tmp_path / 'sweep-local'}", cwd=tmp_path)

    # One array job, one task per model, each COMPLETED in the cluster's job-completion log.
    folders = [p for p in (tmp_path / "sweep" / ".submitit").iterdir() if p.is_dir()]  # <array>, <array>_<task>
    assert len({p.name.split("_")[0] for p in folders}) == 1, folders
    tasks = sorted(p.name for p in folders if "_" in p.name and list(p.glob("*_result.pkl")))
    assert len(tasks) == len(MODELS), tasks
    log = Path(os.environ["BENCH_SLURM_JOBCOMP"]).read_text().splitlines()
    names = [line for line in log if "Name=bench-quickstart" in line]
    assert len(names) >= len(MODELS) and all("JobState=COMPLETED" in line for line in names[-len(MODELS):])

    # The same numbers as the local launcher, run by run and ensemble.
    for exp in ("slurm", "local"):
        bench("ensemble", str(tmp_path / exp / "quickstart"), "k=2", "method=majority", cwd=tmp_path)
    boards = [pd.read_csv(tmp_path / exp / "quickstart" / "leaderboard.csv").set_index("model")
              for exp in ("slurm", "local")]
    columns = ["val_acc", "test_acc", "test_balanced_acc", "val_macro_f1"]
    pd.testing.assert_frame_equal(boards[0][columns].sort_index(), boards[1][columns].sort_index())
    for model in MODELS:
        slurm, local = (runs.read_json(runs.RunDir.for_run(tmp_path / exp / "quickstart", model, 0).metrics)
                        for exp in ("slurm", "local"))
        assert slurm["val"] == local["val"] and slurm["test"] == local["test"], model
    ensembles = [runs.read_json(tmp_path / exp / "quickstart" / "ensembles" / "majority-k2" / "metrics.json")
                 for exp in ("slurm", "local")]
    assert ensembles[0]["test"] == ensembles[1]["test"]
