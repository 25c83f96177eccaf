"""bench-tune's workers as Slurm array tasks, against a real Slurm (``make cluster-test`` starts one on this
machine: tools/local_slurm.py). Skipped, with the reason, when ``SLURM_CONF`` names no running cluster.

``bench-tune ... hydra/launcher=slurm tune.workers=2`` submits two array tasks for the study and exits; the
tasks share the study through its journal file: the study ends with exactly ``tune.trials`` counted trials,
no trial number or configuration twice, trials run by both tasks, and no traceback for the surplus trial.
The same command run again afterwards submits nothing and shows the best configuration; ``--final`` with
the same options retrains it as a job array that bench-sweep follows.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from bench import runs

from tests.helpers import bench_command as bench, cluster_state

pytestmark = [pytest.mark.cluster, pytest.mark.skipif(cluster_state() is not None, reason=str(cluster_state()))]
pytest.importorskip("submitit", reason="submitit is not installed (pip install -e '.[slurm]')")
optuna = pytest.importorskip("optuna", reason="optuna is not installed (pip install -e '.[tune]')")

TUNE = ["experiment=quickstart", "model=simple_cnn",
        "tune.space={optim.lr: 'log(1e-3, 1e-1)', optim.momentum: [0.8, 0.9, 0.95]}", "tune.trials=4",
        "tune.workers=2", "tune.startup_trials=1", "data.synthetic_n_per_class=30", "data.synthetic_size=48",
        "data.image_size=32", "trainer.epochs=2", "trainer.num_threads=1", "trainer.device=cpu",
        "data.decode_workers=1", "trainer.progress=false"]
SLURM = ["hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=0",
         "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=15",
         "hydra.launcher.array_parallelism=2"]


def _queued(job_ids: list[str]) -> list[str]:
    arrays = sorted({j.split("_")[0] for j in job_ids})
    done = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(arrays)], capture_output=True, text=True,
                          timeout=30)
    return done.stdout.split()


def test_two_array_tasks_share_one_study_with_exactly_the_trials_asked_for(tmp_path):
    from bench.data.synthetic import synthetic_root
    from bench.tune import storage_for, study_name

    cache = tmp_path / "cache"
    synthetic_root(cache / "datasets", n_per_class=30, image_size=48, seed=0)  # not drawn by two tasks at once
    args = [*TUNE, *SLURM, f"paths.results_dir={tmp_path / 'results'}", f"paths.cache_dir={cache}"]
    submitted = bench("tune", *args, cwd=tmp_path).stdout
    assert "submitted 2 worker(s)" in submitted, submitted
    exp = tmp_path / "results" / "quickstart"
    [jobs_json] = (exp / "tuning" / "slurm").glob("*/jobs.json")
    ids = [j["job_id"] for j in runs.read_json(jobs_json)["jobs"]]
    assert len(ids) == 2 and len({i.split("_")[0] for i in ids}) == 1, ids  # one array, two tasks

    again = bench("tune", *args, cwd=tmp_path).stdout  # while they run: where the study stands, nothing sent
    assert "nothing submitted" in again or "best val_acc" in again, again
    deadline = time.monotonic() + 600
    while _queued(ids):
        assert time.monotonic() < deadline, f"the workers {ids} did not end in 10 minutes"
        time.sleep(2)
    assert len(list((exp / "tuning" / "slurm").glob("*/jobs.json"))) == 1

    study = optuna.load_study(study_name=study_name("quickstart", "simple_cnn"), storage=storage_for(None, exp))
    counted = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(counted) == 4
    assert len({t.number for t in study.trials}) == len(study.trials)
    assert len({tuple(sorted(t.params.items())) for t in counted}) == 4  # no configuration run twice
    assert sorted(p.name for p in (exp / "tuning" / "simple_cnn").glob("trial*")) == \
        sorted(f"trial{t.number:03d}" for t in counted)
    assert all(t.user_attrs.get("surplus") for t in study.trials if t.state.name == "FAIL")
    workers = [t.user_attrs["worker"] for t in counted]
    assert {w["slurm_array_task"] for w in workers} == {"0", "1"}, workers  # both tasks ran trials
    assert {w["slurm_job"] for w in workers} == {ids[0].split("_")[0]}
    logs = "\n".join(p.read_text(errors="replace") for p in (jobs_json.parent / ".submitit").rglob("*_log.*"))
    assert "Traceback" not in logs, logs[-3000:]

    after = bench("tune", *args, cwd=tmp_path).stdout
    assert "simple_cnn: best val_acc" in after and "submitted" not in after, after
    assert len(list((exp / "tuning" / "slurm").glob("*/jobs.json"))) == 1
    best = runs.read_json(exp / "tuning" / "simple_cnn" / "best.json")
    assert best["value"] == max(t.value for t in counted if t.state.name == "COMPLETE")

    final = bench("tune", "--final", *args, cwd=tmp_path).stdout
    assert "submitted 1 retrain(s) as one job array" in final, final
    waited = bench("sweep", "wait", str(exp / "tuned"), "--every", "1", cwd=tmp_path).stdout
    assert "1 completed" in waited, waited
    import yaml

    config = yaml.safe_load(runs.RunDir.for_run(exp / "tuned", "simple_cnn", 0).config.read_text())
    assert config["optim"]["lr"] == pytest.approx(best["params"]["optim.lr"])  # the best trial's values
    assert config["optim"]["momentum"] == best["params"]["optim.momentum"]
