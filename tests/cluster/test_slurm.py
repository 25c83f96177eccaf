"""Against a real Slurm (``make cluster-test`` starts one on this machine: tools/local_slurm.py).

The quickstart sweep through ``hydra/launcher=slurm`` (hydra-submitit-launcher, sbatch) runs as one job
array, one task per model, and gives the same leaderboard and ensemble as the same sweep run locally.
Skipped, with the reason, when ``SLURM_CONF`` names no running cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench import runs

from tests.helpers import bench_command as bench, cluster_state


pytestmark = [pytest.mark.cluster, pytest.mark.skipif(cluster_state() is not None, reason=str(cluster_state()))]
pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher is not installed")

MODELS = ("simple_cnn", "mobilenet_v2_050")
SHRUNK = ["experiment=quickstart", f"model={','.join(MODELS)}", "data.synthetic_n_per_class=30",
          "data.synthetic_size=48", "data.image_size=32", "trainer.epochs=2", "trainer.max_batches=3",
          "trainer.num_threads=1", "trainer.device=cpu", "data.decode_workers=1", "trainer.progress=false"]
SLURM = ["hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=0",
         "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=15",
         "hydra.launcher.array_parallelism=2"]


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


def _job_ids(name: str) -> list[str]:
    done = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True, timeout=30)
    return done.stdout.split()


def test_a_warned_job_writes_its_epoch_is_requeued_and_ends_as_an_uninterrupted_run(tmp_path):
    """The scheduler's warning (scancel --signal=USR2, what Slurm sends signal_delay_s before a time limit
    or on pre-emption) mid-run with no checkpoint due: the epoch finishes and is written, submitit requeues
    the job (scontrol requeue), the requeued job resumes after that epoch, and the run's numbers equal a
    run never interrupted."""
    import time

    from bench.data.synthetic import synthetic_root

    cache = tmp_path / "cache"
    synthetic_root(cache / "datasets", n_per_class=60, image_size=48, seed=0)
    common = ["experiment=quickstart", "model=mobilenet_v2_050", "data.synthetic_n_per_class=60",
              "data.synthetic_size=48", "data.image_size=48", "trainer.epochs=12", "trainer.num_threads=1",
              "trainer.device=cpu", "data.decode_workers=1", "trainer.progress=false",
              "trainer.checkpoint_every_s=3600", f"paths.cache_dir={cache}"]
    script = Path(sys.executable).with_name("bench-train")
    sweep = subprocess.Popen([str(script), "-m", *common, *SLURM, "hydra.launcher.name=bench-warned",
                              f"paths.results_dir={tmp_path / 'slurm'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = runs.RunDir.for_run(tmp_path / "slurm" / "quickstart", "mobilenet_v2_050", 0)
    deadline = time.monotonic() + 300
    while not (run.history.is_file() and len(pd.read_csv(run.history)) >= 1):  # one epoch done, eleven to go
        assert time.monotonic() < deadline and sweep.poll() is None, "the job never finished an epoch"
        time.sleep(0.2)
    done_before = len(pd.read_csv(run.history))
    jobs = _job_ids("bench-warned")
    assert len(jobs) == 1, jobs
    subprocess.run(["scancel", "--signal=USR2", jobs[0]], check=True, timeout=30)
    out, _ = sweep.communicate(timeout=600)
    assert sweep.returncode == 0, out[-3000:]

    logs = "\n".join(p.read_text(errors="replace") for p in sorted((tmp_path / "sweep" / ".submitit").rglob("*_log.*")))
    assert "the scheduler's warning" in logs and "Requeued job" in logs, logs[-3000:]
    import re

    # The requeued job starts after the epoch that was running when the warning came (no write was due).
    resumed_after = [int(e) for e in re.findall(r"resuming \S+ after epoch (\d+)", logs)]
    assert len(resumed_after) == 1 and resumed_after[0] in (done_before, done_before + 1), (resumed_after, done_before)
    history = pd.read_csv(run.history)
    assert history["epoch"].tolist() == list(range(1, 13))

    local = subprocess.run([str(script), "-m", *common, f"paths.results_dir={tmp_path / 'local'}",
                            f"hydra.sweep.dir={tmp_path / 'sweep-local'}"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=600)
    assert local.returncode == 0, local.stderr[-3000:]
    whole = runs.RunDir.for_run(tmp_path / "local" / "quickstart", "mobilenet_v2_050", 0)
    cols = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc"]
    pd.testing.assert_frame_equal(pd.read_csv(whole.history)[cols], history[cols])
    assert runs.read_json(whole.metrics)["test"] == runs.read_json(run.metrics)["test"]


def test_submit_and_walk_away_then_status_resubmit_what_was_lost_and_wait(tmp_path):
    """bench-sweep submit exits while the array runs; status names each run's state; a task killed mid-run
    (scancel) is 'lost'; resubmit sends that run alone, which resumes; the completed run is never retrained."""
    import time

    from bench.data.synthetic import synthetic_root

    cache = tmp_path / "cache"
    synthetic_root(cache / "datasets", n_per_class=60, image_size=48, seed=0)
    args = ["experiment=quickstart", "model=simple_cnn,mobilenet_v2_050", "data.synthetic_n_per_class=60",
            "data.synthetic_size=48", "data.image_size=48", "trainer.epochs=12", "trainer.num_threads=1",
            "trainer.device=cpu", "data.decode_workers=1", "trainer.progress=false", "trainer.checkpoint_every_s=0",
            f"paths.cache_dir={cache}", f"paths.results_dir={tmp_path / 'results'}",
            *[a for a in SLURM if a != "hydra/launcher=slurm"]]
    start = time.monotonic()
    submitted = bench("sweep", "submit", *args, cwd=tmp_path)
    exp = tmp_path / "results" / "quickstart"
    assert "submitted 2 run(s)" in submitted.stdout and time.monotonic() - start < 120
    status = bench("sweep", "status", str(exp), cwd=tmp_path).stdout
    assert "simple_cnn/seed0" in status and "mobilenet_v2_050/seed0" in status, status

    slow = runs.RunDir.for_run(exp, "mobilenet_v2_050", 0)
    deadline = time.monotonic() + 300
    while not (slow.history.is_file() and len(pd.read_csv(slow.history)) >= 1):
        assert time.monotonic() < deadline, bench("sweep", "status", str(exp), cwd=tmp_path).stdout
        time.sleep(0.2)
    from bench.sweep import sweep_states

    job = next(s.job_id for s in sweep_states(exp) if s.model == "mobilenet_v2_050")
    # SIGKILL to the whole job at once (a plain scancel's SIGTERM is ignored by submitit until KillWait ends:
    # on a fast machine the run could finish first).
    subprocess.run(["scancel", "--signal=KILL", "--full", job], check=True, timeout=30)
    waited = subprocess.run([str(Path(sys.executable).with_name("bench-sweep")), "wait", str(exp), "--every", "1"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert waited.returncode == 1, waited.stdout  # one run lost
    assert "mobilenet_v2_050/seed0" in waited.stdout and " lost " in waited.stdout, waited.stdout
    assert "next: bench-sweep resubmit" in waited.stdout
    fast = runs.RunDir.for_run(exp, "simple_cnn", 0)
    finished = fast.metrics.stat().st_mtime_ns

    again = bench("sweep", "resubmit", str(exp), cwd=tmp_path).stdout
    assert "resubmitted 1 run(s) (mobilenet_v2_050/seed0)" in again, again
    final = bench("sweep", "wait", str(exp), "--every", "1", cwd=tmp_path).stdout
    assert "2 completed" in final, final
    assert fast.metrics.stat().st_mtime_ns == finished  # never trained again
    assert pd.read_csv(slow.history)["epoch"].tolist() == list(range(1, 13))  # resumed, each epoch once


def test_submit_asks_slurm_for_what_the_plan_measured(tmp_path):
    import json

    args = ["experiment=quickstart", "model=simple_cnn", "data.synthetic_n_per_class=30", "data.synthetic_size=48",
            "data.image_size=32", "trainer.epochs=1", "trainer.max_batches=2", "trainer.num_threads=1",
            "trainer.device=cpu", "data.decode_workers=1", f"paths.cache_dir={tmp_path / 'cache'}",
            f"paths.results_dir={tmp_path / 'results'}"]
    launcher = [a for a in SLURM if a not in ("hydra/launcher=slurm", "hydra.launcher.timeout_min=15",
                                              "hydra.launcher.mem_gb=2")]
    exp = tmp_path / "results" / "quickstart"
    planned = bench("sweep", "plan", *args, cwd=tmp_path).stdout
    asks = json.loads((exp / "sweeps" / "plan.json").read_text())["resources"]
    assert f"hydra.launcher.timeout_min={asks['timeout_min']}" in planned
    bench("sweep", "submit", *args, *launcher, cwd=tmp_path)
    script = next((exp / "sweeps").glob("*/.submitit/*/*_submission.sh")).read_text()
    assert f"#SBATCH --time={asks['timeout_min']}" in script and f"#SBATCH --mem={asks['mem_gb']}GB" in script, script
    assert "1 completed" in bench("sweep", "wait", str(exp), "--every", "1", cwd=tmp_path).stdout


def test_every_array_task_logs_to_one_mlflow_tracking_server(tmp_path):
    """logger=mlflow with a tracking server: the runs of both array tasks (which start together, so both may
    create the experiment) arrive with their parameters and final metrics. The server is MLflow's own,
    from its own environment (make cluster-test installs it in .venv-mlflow), on the loopback address with
    a SQLite store, stopped by its process group."""
    import signal
    import socket
    import time
    import urllib.request

    server = os.environ.get("BENCH_MLFLOW")
    if not server or not Path(server).exists():
        pytest.skip("no MLflow server (BENCH_MLFLOW names the mlflow executable; make cluster-test installs it)")
    from mlflow.tracking import MlflowClient

    from bench.data.synthetic import synthetic_root

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "mlflow.log", "wb")
    proc = subprocess.Popen([server, "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                             "--default-artifact-root", str(tmp_path / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if urllib.request.urlopen(f"{uri}/health", timeout=2).read().strip() == b"OK":
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "mlflow.log").read_text()[-2000:]
            time.sleep(0.5)
        cache = tmp_path / "cache"
        synthetic_root(cache / "datasets", n_per_class=30, image_size=48, seed=0)
        bench("train", "-m", *SHRUNK, *SLURM, f"paths.cache_dir={cache}", f"paths.results_dir={tmp_path / 'results'}",
              f"hydra.sweep.dir={tmp_path / 'sweep'}", "logger=mlflow", f"logger.tracking_uri={uri}", cwd=tmp_path)
        client = MlflowClient(uri)
        found = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id])
        assert sorted(r.data.params["model.name"] for r in found) == sorted(MODELS)
        for r in found:
            metrics = runs.read_json(runs.RunDir.for_run(tmp_path / "results" / "quickstart",
                                                         r.data.params["model.name"], 0).metrics)
            assert r.data.metrics["final_test_acc"] == pytest.approx(metrics["test"]["accuracy"])
            assert r.info.status == "FINISHED"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_two_jobs_of_the_same_run_train_it_once(tmp_path):
    """The same sweep submitted twice at once: both jobs start, one holds the run (flock and lease), the other
    says who trains it and leaves; the run is trained once, each epoch once."""
    from bench.data.synthetic import synthetic_root

    cache = tmp_path / "cache"
    synthetic_root(cache / "datasets", n_per_class=60, image_size=48, seed=0)
    args = ["experiment=quickstart", "model=mobilenet_v2_050", "data.synthetic_n_per_class=60",
            "data.synthetic_size=48", "data.image_size=48", "trainer.epochs=4", "trainer.num_threads=1",
            "trainer.device=cpu", "data.decode_workers=1", "trainer.progress=false",
            f"paths.cache_dir={cache}", f"paths.results_dir={tmp_path / 'results'}",
            *[a for a in SLURM if a != "hydra/launcher=slurm"]]
    exp = tmp_path / "results" / "quickstart"
    held = [*args, "++hydra.launcher.additional_parameters.hold=true"]  # both start at once when released
    bench("sweep", "submit", *held, cwd=tmp_path)
    bench("sweep", "submit", *held, cwd=tmp_path)
    jobs = sorted({t["job_id"] for p in sorted((exp / "sweeps").glob("*/ledger.json"))
                   for t in runs.read_json(p)["tasks"]})
    assert len(jobs) == 2, jobs
    subprocess.run(["scontrol", "release", ",".join(j.split("_")[0] for j in jobs)], check=True, timeout=30)
    subprocess.run([str(Path(sys.executable).with_name("bench-sweep")), "wait", str(exp), "--every", "1"],
                   cwd=tmp_path, capture_output=True, text=True, timeout=600)
    import time

    deadline = time.monotonic() + 120  # the second job may still be saying why it left
    while any(line for line in subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.splitlines()):
        assert time.monotonic() < deadline
        time.sleep(1)
    logs = [p.read_text(errors="replace") for p in sorted((exp / "sweeps").glob("*/.submitit/*/*_log.out"))]
    assert len(logs) == 2
    assert sum("being trained by" in text for text in logs) == 1, logs  # the one that left said why
    assert sum("epoch 4/4" in text for text in logs) == 1
    run = runs.RunDir.for_run(exp, "mobilenet_v2_050", 0)
    assert runs.read_json(run.status)["status"] == runs.STATUS_COMPLETED
    assert pd.read_csv(run.history)["epoch"].tolist() == [1, 2, 3, 4]
