"""bench-tune: the search space's text, pruning on scripted validation numbers, seeded trials, the best
configuration chosen on validation only, a dead worker's trial retried once, and two worker processes
sharing one journal with exactly the trials asked for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna", reason="optuna is not installed (pip install -e '.[tune]')")

from bench import runs
from bench.tune import SpaceError, parse_space, trial_objective

SPACE = {"optim.lr": "log(1e-4, 1e-1)", "optim.momentum": [0.8, 0.95], "trainer.batch_size": "int(8, 64)"}


def test_the_space_is_read_as_written_and_a_bad_one_is_named():
    assert parse_space(SPACE) == {"optim.lr": ("log", 1e-4, 1e-1), "optim.momentum": ("choice", [0.8, 0.95]),
                                  "trainer.batch_size": ("int", 8, 64)}
    with pytest.raises(SpaceError, match=r"tune.space.optim.lr='log\(0, 1\)': needs lo < hi and lo > 0"):
        parse_space({"optim.lr": "log(0, 1)"})
    with pytest.raises(SpaceError, match="tune.space is empty"):
        parse_space(None)
    with pytest.raises(SpaceError, match=r"tune.space.optim.lr='exp\(1, 2\)' is not log"):
        parse_space({"optim.lr": "exp(1, 2)"})


def scripted(tmp_path, curves: dict[int, list[float]], calls: list):
    """A stand-in for run_training: trial n's epochs report curves[n]; a stop request ends the run there,
    written as bench's loop writes it (stopped_early in metrics.json)."""
    def train(cfg, *, epoch_hook):
        n = int(cfg.experiment_name.rsplit("trial", 1)[1])
        run_dir = tmp_path / f"trial{n}"
        run_dir.mkdir(parents=True, exist_ok=True)
        seen, stopped = [], None
        for epoch, value in enumerate(curves[n], start=1):
            seen.append(value)
            stopped = epoch_hook(epoch, {"val_acc": value, "val_loss": 1.0})
            if stopped:
                break
        calls.append((n, len(seen)))
        metrics = {"val": {"accuracy": max(seen)}, "test": {"accuracy": 0.0},
                   **({"stopped_early": {"after_epoch": len(seen), "why": stopped}} if stopped else {})}
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        return {"status": "completed", "run_dir": str(run_dir), "val_score": max(seen)}
    return train


@pytest.mark.known_answer
def test_a_trial_below_the_median_is_pruned_after_that_epoch_and_is_a_row_not_an_error(tmp_path):
    # Trial 0 runs whole (startup); trial 1 reports 0.1 at epoch 1 where trial 0 had 0.5: the median pruner
    # stops it after epoch 1; trial 2 stays above trial 0 and runs whole.
    curves = {0: [0.5, 0.6, 0.7], 1: [0.1, 0.1, 0.1], 2: [0.9, 0.9, 0.9]}
    calls = []
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    study.optimize(trial_objective([], "simple_cnn", parse_space(SPACE), "exp", "val_acc",
                                   train=scripted(tmp_path, curves, calls)), n_trials=3)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "PRUNED", "COMPLETE"]
    assert calls == [(0, 3), (1, 1), (2, 3)]
    assert study.best_trial.number == 2 and study.best_value == 0.9  # the validation number; test is 0.0


def test_the_same_seed_draws_the_same_trials(tmp_path):
    def params(seed):
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
        curves = {n: [0.5] for n in range(6)}
        study.optimize(trial_objective([], "simple_cnn", parse_space(SPACE), "exp", "val_acc",
                                       train=scripted(tmp_path / str(seed), curves, [])), n_trials=6)
        return [t.params for t in study.trials]

    assert params(3) == params(3) and params(3) != params(4)


@pytest.mark.reliability
def test_a_trial_a_dead_worker_left_running_is_failed_and_tried_once_more(tmp_path):
    from bench.tune.study import RETRIED, prepare_study

    tune = {"storage": None}
    study = prepare_study("exp", "simple_cnn", tmp_path, tune)
    trial = study.ask()
    trial.suggest_float("optim.lr", 1e-4, 1e-1, log=True)  # then its worker dies: the trial stays RUNNING
    again = prepare_study("exp", "simple_cnn", tmp_path, tune)
    trials = again.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]
    assert trials[1].system_attrs["fixed_params"] == trials[0].params and trials[1].user_attrs[RETRIED] == 0
    assert len(prepare_study("exp", "simple_cnn", tmp_path, tune).get_trials(deepcopy=False)) == 2  # once only


@pytest.mark.slow
def test_two_workers_share_one_journal_and_the_study_has_exactly_the_trials_asked_for(tmp_path, cache_dir):
    from bench.data.synthetic import synthetic_root

    synthetic_root(cache_dir / "datasets", n_per_class=30, image_size=48, seed=0)  # not drawn by two workers at once
    args = ["experiment=quickstart", "model=simple_cnn", "tune.space={optim.lr: 'log(1e-3, 1e-1)', optim.momentum: [0.8, 0.95]}",
            "tune.trials=4", "tune.workers=2", "tune.startup_trials=1", "trainer.epochs=2", "data.synthetic_n_per_class=30",
            "data.image_size=32", "data.synthetic_size=48", "trainer.num_threads=1", "trainer.progress=false",
            f"paths.results_dir={tmp_path / 'results'}", f"paths.cache_dir={cache_dir}"]
    script = Path(sys.executable).with_name("bench-tune")
    done = subprocess.run([str(script), *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    exp = tmp_path / "results" / "quickstart"
    from bench.tune.study import storage_for, study_name

    study = optuna.load_study(study_name=study_name("quickstart", "simple_cnn"), storage=storage_for(None, exp))
    counted = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(counted) == 4
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    folders = sorted(p.name for p in (exp / "tuning" / "simple_cnn").glob("trial*"))
    assert len(folders) == 4 and len({t.params["optim.lr"] for t in counted}) == 4  # no trial run twice
    best = runs.read_json(exp / "tuning" / "simple_cnn" / "best.json")
    assert best["value"] == max(t.value for t in counted if t.state.name == "COMPLETE")
    run = runs.read_json(Path(best["run_dir"]) / "metrics.json")
    assert best["value"] == pytest.approx(run["val"]["accuracy"])  # chosen on validation

    final = subprocess.run([str(script), "--final", *args], capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    board = (exp / "tuned" / "leaderboard.csv").read_text()
    assert "simple_cnn" in board
    tuned = runs.read_json(runs.RunDir.for_run(exp / "tuned", "simple_cnn", 0).metrics)
    assert any(d.startswith("optim.lr=") for d in tuned["protocol_deviations"]) or best["params"]["optim.lr"] == 0.001


@pytest.mark.reliability
def test_a_surplus_trial_ends_its_worker_quietly_without_training_or_a_traceback(tmp_path, capfd):
    # tune.trials=2: one trial complete and one still running on another worker. A free worker's next
    # trial is a surplus: told FAILED with the surplus mark, nothing trained, no traceback printed.
    from bench.tune.study import _worker, prepare_study

    tune = {"storage": None, "seed": 0, "pruner": "none", "startup_trials": 0, "trials": 2}
    study = prepare_study("exp", "simple_cnn", tmp_path, tune)
    study.add_trial(optuna.trial.create_trial(value=0.5, params={}, distributions={}))
    study.ask()  # the other worker's trial, running
    _worker(0, [], "simple_cnn", parse_space(SPACE), "exp", str(tmp_path), tune, "val_acc")
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["COMPLETE", "RUNNING", "FAIL"]
    assert trials[2].user_attrs == {"surplus": True} and trials[2].params == {}
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and "Surplus" not in out + err


def test_slurm_workers_get_the_launcher_options_and_the_trials_never_see_them(tmp_path, monkeypatch, capsys):
    import bench.tune
    from bench.cli.tune import main

    assert bench.tune.is_slurm(["hydra/launcher=slurm"]) and bench.tune.is_slurm(["++hydra/launcher=submitit_slurm"])
    assert not bench.tune.is_slurm(["hydra/launcher=local", "hydra.launcher.partition=gpu"])
    args = ["model=simple_cnn,resnet18", "tune.space={optim.lr: 'log(1e-3, 1e-1)'}", "tune.workers=3",
            f"paths.results_dir={tmp_path}"]
    assert main([*args, "hydra.launcher.partition=gpu"]) == 2  # Slurm options without the Slurm launcher
    assert "add hydra/launcher=slurm" in capsys.readouterr().err

    sent = {}

    def submit(launcher, models, workers, base, *rest):
        sent.update(launcher=launcher, models=models, workers=workers, base=base)
        path = tmp_path / "jobs.json"
        plan = [(m, k) for m in models for k in range(workers)]
        runs.write_json_atomic(path, {"jobs": [{"job_id": f"7_{i}", "model": m, "worker": k}
                                               for i, (m, k) in enumerate(plan)]})
        return path

    monkeypatch.setattr(bench.tune, "submit_workers", submit)
    monkeypatch.setattr(bench.tune, "queued_jobs", lambda exp_dir: [])
    launcher = ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "++hydra.launcher.additional_parameters.x=1"]
    assert main([*args, *launcher]) == 0
    assert sent["launcher"] == launcher and sent["models"] == ["simple_cnn", "resnet18"] and sent["workers"] == 3
    assert not [o for o in sent["base"] if "hydra" in o]
    out = capsys.readouterr().out
    assert "simple_cnn: 0 of 20 trials counted" in out and "submitted 6 worker(s)" in out and "7_5" in out


def test_the_command_line_is_planned_once_and_final_retrains_every_best_configuration_with_every_seed(tmp_path):
    from bench.tune import TuneJobError, final_tasks, plan_job

    space = "tune.space={optim.lr: 'log(1e-3, 1e-1)'}"
    job = plan_job(["experiment=quickstart", "model=simple_cnn,resnet18", "seed=0,1", space,
                    f"paths.results_dir={tmp_path}", "experiment_name=t"])
    assert job.models == ["simple_cnn", "resnet18"] and job.seeds == ["0", "1"]
    assert job.space == {"optim.lr": ("log", 1e-3, 1e-1)} and job.tuned_dir == tmp_path / "t" / "tuned"
    assert f"paths.results_dir={tmp_path}" in job.base and "seed=0" in job.base
    best = {"simple_cnn": {"params": {"optim.lr": 0.02}}, "resnet18": {"best": None, "trials": {"pruned": 2}}}
    tasks = final_tasks(job, best)
    assert [(m, s) for m, s, _ in tasks] == [("simple_cnn", 0), ("simple_cnn", 1)]  # resnet18 has no completed trial
    for _, seed, overrides in tasks:
        assert {"model=simple_cnn", f"seed={seed}", "optim.lr=0.02", "experiment_name=t/tuned"} <= set(overrides)
        assert [o for o in overrides if o.startswith("seed=")] == [f"seed={seed}"]
    with pytest.raises(TuneJobError, match="only model= and seed= may take several values.*optim.lr"):
        plan_job(["experiment=quickstart", "optim.lr=0.1,0.01", space])
