"""``bench-tune``: one Optuna study per architecture, trials as run folders, then ``--final`` retrains each
best configuration as ordinary runs (bench.tune). With ``hydra/launcher=slurm`` the workers (and the
``--final`` retrains) are submitted as Slurm array tasks. The command line only: parsing, calling, printing."""

from __future__ import annotations

import shlex
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    from bench.cli.commands import parser

    args = parser("bench-tune").parse_args(argv)
    try:
        import optuna  # noqa: F401
    except ImportError:
        print("bench-tune: optuna is not installed; pip install -e '.[tune]'.", file=sys.stderr)
        return 2
    from bench.sweep import is_launcher_arg
    from bench.tune import is_slurm

    given = [o for o in args.overrides if o not in ("-m", "--multirun")]
    # The launcher's settings are the executor's: they never reach a trial's composed config.
    launcher = [o for o in given if is_launcher_arg(o)]
    if launcher and not is_slurm(launcher) and any(not o.lstrip("+").startswith("hydra/launcher=") for o in launcher):
        print("bench-tune: hydra.launcher.* options set the Slurm jobs of hydra/launcher=slurm; add "
              "hydra/launcher=slurm to submit the workers as array tasks, or drop them to run the workers here.",
              file=sys.stderr)
        return 2
    from bench.tune import TuneJobError, plan_job

    try:
        job = plan_job([o for o in given if not is_launcher_arg(o)])
    except TuneJobError as exc:
        print(f"bench-tune: {exc}", file=sys.stderr)
        return 2
    slurm = launcher if is_slurm(launcher) else None
    if args.final:
        return _final(job, slurm, args.overrides)
    if slurm:
        submitted = _submit_workers(job, slurm, args.overrides)
        if submitted is not None:
            return submitted
    else:
        from bench.tune import run_studies

        run_studies(job.base, job.models, job.space, job.exp_name, job.exp_dir, job.tune, job.select_by)
    _print_best(job)
    print(f"next: bench-tune --final {' '.join(map(shlex.quote, args.overrides))}   (retrains each best configuration "
          f"as {job.tuned_name})")
    return 0


def _print_best(job) -> dict:
    from bench.tune import best_trials

    best = best_trials(job.models, job.exp_name, job.exp_dir, job.tune, job.select_by)
    for model, record in best.items():
        counts = ", ".join(f"{n} {s}" for s, n in sorted(record["trials"].items()))
        if "params" not in record:
            print(f"{model}: no completed trial ({counts})")
            continue
        print(f"{model}: best {job.select_by} {record['value']:.4f} (trial {record['trial']}): "
              + " ".join(f"{k}={v}" for k, v in record["params"].items()) + f"   [{counts}]")
    return best


def _submit_workers(job, launcher: list[str], given: list[str]) -> int | None:
    """Submit tune.workers array tasks per study short of its trials and return 0; None when every study has
    its trials and no worker is queued (the caller shows the best configurations)."""
    import optuna

    from bench import runs
    from bench.tune import prepare_study, queued_jobs, storage_for, study_name, submit_workers, trial_states

    again = f"bench-tune {' '.join(map(shlex.quote, given))}"
    try:
        queued = queued_jobs(job.exp_dir)
    except RuntimeError as exc:
        print(f"bench-tune: {exc}", file=sys.stderr)
        return 2
    short = []
    for model in job.models:
        if queued:  # workers at work: read the study, never mark their running trials as dead
            try:
                study = optuna.load_study(study_name=study_name(job.exp_name, model),
                                          storage=storage_for(job.tune["storage"], job.exp_dir))
            except KeyError:  # a model added to the command since the workers were sent
                print(f"{model}: no study yet (sent once the queued workers have ended)")
                continue
        else:
            study = prepare_study(job.exp_name, model, job.exp_dir, job.tune)
        states = trial_states(study)
        counted = states.get("complete", 0) + states.get("pruned", 0)
        print(f"{model}: {counted} of {job.tune['trials']} trials counted ("
              + (", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "no trial yet") + ")")
        short += [model] if counted < int(job.tune["trials"]) else []
    if queued:
        states = ", ".join(f"{j['job_id']} {j['state']}" for j in queued)
        print(f"{len(queued)} worker job(s) still in the queue ({states}); nothing submitted. Run `{again}` again "
              "once they have ended: it shows the best configurations.")
        return 0
    if not short:
        return None
    path = submit_workers(launcher, short, int(job.tune["workers"]), job.base, job.space, job.exp_name, job.exp_dir,
                          job.tune, job.select_by)
    ids = [j["job_id"] for j in runs.read_json(path)["jobs"]]
    print(f"submitted {len(ids)} worker(s) ({job.tune['workers']} per study of {', '.join(short)}): jobs "
          f"{', '.join(ids)}; recorded in {path}. Check with `squeue -j {ids[0].split('_')[0]}`, and run `{again}` "
          "again: while they run it says where each study stands, afterwards it shows the best configurations.")
    return 0


def _final(job, launcher: list[str] | None, given: list[str]) -> int:
    """Retrain each best configuration with every seed as <experiment>/tuned: here, or as one Slurm job array
    (bench-sweep's tasks and ledger, so bench-sweep status / resubmit / wait work on it)."""
    from bench import runs
    from bench.config import compose_config
    from bench.training import run_training
    from bench.tune import final_tasks

    tasks = final_tasks(job, _print_best(job))
    if launcher:
        from bench.sweep import Task, submit_tasks

        ledger = submit_tasks([Task(o, m, s, str(runs.RunDir.for_run(job.tuned_dir, m, s).root)) for m, s, o in tasks],
                              [*launcher, f"experiment_name={job.tuned_name}"], job.tuned_dir)
        print(f"submitted {len(tasks)} retrain(s) as one job array, recorded in {ledger}; follow them with "
              f"`bench-sweep status {job.tuned_dir}` (or `bench-sweep wait {job.tuned_dir}`).")
        return 0
    failed = 0
    for model, seed, overrides in tasks:
        out = run_training(compose_config(overrides))
        failed += out["status"] == "failed"
        print(f"{model} seed {seed}: {out['status']} -> {out.get('run_dir')}")
    return 1 if failed else 0
