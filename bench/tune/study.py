"""The studies of ``bench-tune``: trials as run folders, workers without a barrier, pruning, resume.

- **A trial is a run.** Trial ``n`` of ``model`` trains with the sampled values as overrides, in the
  experiment ``<experiment>/tuning/<model>/trial<n>``: the run lifecycle, resume and failed rows as for
  any run. Its value is the run's best validation number of ``trainer.select_by``; test is never read.
- **Workers ask when free.** ``tune.workers`` processes (local, or Slurm array tasks: :mod:`.slurm`) each
  ask the same study for a trial until it has ``tune.trials`` complete or pruned trials: a worker that ends
  a trial takes the next at once, so no worker waits for the slowest of a batch. A trial two free workers
  start at once beyond that count is a surplus: told FAILED (user attr ``surplus``) without training.
- **Storage.** An Optuna journal file, ``<experiment>/tuning/journal.log`` (file locks: a shared
  filesystem is enough, no database server), or ``tune.storage=`` a database URL.
- **Pruning.** Every epoch reports its validation number; when the pruner (median of the other trials
  at that epoch, or successive halving) says so, the run stops after that epoch as a completed run with
  ``stopped_early`` in metrics.json, and the trial is PRUNED: a row with its last epoch, not an error.
- **Resume.** The same command continues the study: completed and pruned trials are kept. A trial left
  RUNNING by a worker that died is marked FAILED and its values are tried once more (its run folder
  resumes from last.pt). Only one bench-tune command may work on a study at a time for this rule.
"""

from __future__ import annotations

import logging
import multiprocessing
from pathlib import Path
from typing import Callable

from bench import runs

log = logging.getLogger("bench.tune")

TUNING_DIR = "tuning"
RETRIED = "retry_of"  # user attr of a trial enqueued to retry a dead worker's trial
WORKER = "worker"  # user attr: the host, pid and Slurm job/array task of the process that ran the trial
TUNED_DIR = "tuned"  # <experiment>/tuned: bench-tune --final's retrains of each best configuration


def worker_identity() -> dict:
    """Host, pid and, in a Slurm job, the job id and array task id of this process."""
    import os
    import socket

    slurm = {"slurm_job": os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID"),
             "slurm_array_task": os.environ.get("SLURM_ARRAY_TASK_ID")}
    return {"host": socket.gethostname(), "pid": os.getpid(), **{k: v for k, v in slurm.items() if v is not None}}


def storage_for(storage: str | None, exp_dir: Path):
    if storage:
        return storage
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = Path(exp_dir) / TUNING_DIR / "journal.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def make_pruner(kind: str, startup_trials: int):
    import optuna

    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=0)
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"tune.pruner={kind!r} is not one of median, halving, none.")


class Surplus(RuntimeError):
    """A trial that two free workers started at once beyond tune.trials: not run (FAILED, user attr surplus)."""


def trial_objective(base: list[str], model: str, space: dict, exp_name: str, select_by: str,
                    train: Callable | None = None, n_trials: int | None = None) -> Callable:
    """Optuna's objective for ``model``: sample, train a run (``train``: run_training), report each epoch.
    With ``n_trials``, a trial numbered after that many counted (complete, pruned or running) trials is a
    surplus: it trains nothing and stops its worker, so the study ends with exactly ``n_trials``."""
    import optuna
    from optuna.trial import TrialState

    from bench.config import compose_config
    from bench.tune.space import suggest

    def objective(trial) -> float:
        if n_trials is not None:
            before = [t for t in trial.study.get_trials(deepcopy=False, states=(
                TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)) if t.number < trial.number]
            if len(before) >= n_trials:
                trial.set_user_attr("surplus", True)
                raise Surplus(f"trial {trial.number}: the study has its {n_trials} trials")
        # Which process ran the trial (a Slurm array task, a local worker): how the cluster test sees
        # that the tasks shared the study, and how a user finds a trial's log.
        trial.set_user_attr(WORKER, worker_identity())
        values = suggest(trial, space)
        overrides = [*base, f"model={model}", *(f"{k}={v}" for k, v in values.items()),
                     f"experiment_name={exp_name}/{TUNING_DIR}/{model}/trial{trial.number:03d}"]
        cfg = compose_config(overrides)

        def hook(epoch: int, numbers: dict) -> str | None:
            value = numbers.get(select_by)
            if value is None:
                return None
            trial.report(float(value), epoch)
            if trial.should_prune():
                return f"pruned by the study's pruner after epoch {epoch} ({select_by} {float(value):.4f})"
            return None

        out = (train or _run_training)(cfg, epoch_hook=hook)
        trial.set_user_attr("run_dir", str(out.get("run_dir")))
        if out.get("status") == runs.STATUS_FAILED:
            raise RuntimeError(f"trial {trial.number} ({model}): {out.get('error')}")
        metrics_path = Path(str(out.get("run_dir"))) / "metrics.json"
        stopped = runs.read_json(metrics_path).get("stopped_early") if metrics_path.exists() else None
        if stopped:
            raise optuna.TrialPruned(stopped["why"])
        return float(out["val_score"])

    return objective


def _run_training(cfg, *, epoch_hook):
    from bench.training import run_training

    return run_training(cfg, epoch_hook=epoch_hook)


def study_name(exp_name: str, model: str) -> str:
    return f"{exp_name}/{model}"


def _worker(k: int, base: list[str], model: str, space: dict, exp_name: str, exp_dir: str, tune: dict,
            select_by: str) -> None:
    """Ask the study for trials until it has ``tune['trials']`` counted ones (or this worker asked that many)."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name(exp_name, model), storage=storage_for(tune["storage"], Path(exp_dir)),
                              sampler=optuna.samplers.TPESampler(seed=int(tune["seed"]) + k),
                              pruner=make_pruner(tune["pruner"], int(tune["startup_trials"])))
    n = int(tune["trials"])
    objective = trial_objective(base, model, space, exp_name, select_by, n_trials=n)
    # ask/tell, not study.optimize: optimize logs every exception it catches with its traceback, and a
    # surplus trial is the normal end of a worker, not an error. At most n asks per worker (as
    # optimize(n_trials=n)), so a study whose every trial fails still ends.
    for _ in range(n):
        if _counted(study) >= n:
            return
        trial = study.ask()
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)  # Optuna keeps its last reported value
        except Surplus:
            study.tell(trial, state=TrialState.FAIL)
            log.info("%s: worker %d stops, the study has its %d trials", model, k, n)
            return
        except RuntimeError as exc:  # a failed run: its row holds the error; the study goes on
            study.tell(trial, state=TrialState.FAIL)
            log.warning("%s", exc)
        else:
            study.tell(trial, value)


def _counted(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def trial_states(study) -> dict[str, int]:
    """How many trials of the study are in each state (``complete``, ``pruned``, ``running``, ``fail``,
    ``surplus (not run)``)."""
    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        state = "surplus (not run)" if t.user_attrs.get("surplus") else t.state.name.lower()
        states[state] = states.get(state, 0) + 1
    return states


def prepare_study(exp_name: str, model: str, exp_dir: Path, tune: dict):
    """Create or load the study; a RUNNING trial (its worker died) becomes FAILED and is enqueued once more."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.create_study(study_name=study_name(exp_name, model), storage=storage_for(tune["storage"], exp_dir),
                                direction="maximize", load_if_exists=True)
    retried = {t.user_attrs.get(RETRIED) for t in study.get_trials(deepcopy=False)}
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        if t.number not in retried:
            study.enqueue_trial(t.params, user_attrs={RETRIED: t.number})
            log.warning("%s: trial %d was left running by a worker that stopped; marked failed and tried once more",
                        model, t.number)
    return study


def run_studies(base: list[str], models: list[str], space: dict, exp_name: str, exp_dir: Path, tune: dict,
                select_by: str) -> None:
    """Each model's study to ``tune['trials']`` counted trials, with ``tune['workers']`` processes at once."""
    for model in models:
        prepare_study(exp_name, model, exp_dir, tune)
        args = (base, model, space, exp_name, str(exp_dir), tune, select_by)
        workers = max(1, int(tune["workers"]))
        if workers == 1:
            _worker(0, *args)
            continue
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_worker, args=(k, *args)) for k in range(workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()


def best_trials(models: list[str], exp_name: str, exp_dir: Path, tune: dict, select_by: str) -> dict[str, dict]:
    """Per model, the best trial by its validation value (test never read), written to
    ``tuning/<model>/best.json``; with the count of trials by state."""
    import optuna

    out = {}
    for model in models:
        study = optuna.load_study(study_name=study_name(exp_name, model), storage=storage_for(tune["storage"], exp_dir))
        states = trial_states(study)
        record = {"model": model, "study": study.study_name, "best": None, "trials": states}
        try:
            best = study.best_trial
        except ValueError:  # no completed trial: the counts still say what happened
            best = None
        if best is not None:
            record = {"model": model, "study": study.study_name, "select_by": select_by, "value": best.value,
                      "params": best.params, "trial": best.number, "run_dir": best.user_attrs.get("run_dir"),
                      "trials": states}
        runs.write_json_atomic(Path(exp_dir) / TUNING_DIR / runs.model_dirname(model) / "best.json", record)
        out[model] = record
    return out
