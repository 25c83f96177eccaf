"""``bench-sweep``: submit a sweep to Slurm and walk away, see where it stands, send again what did not
complete (bench.sweep). The command line only: parsing, calling, printing."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    from bench.cli.commands import parser

    cli = parser("bench-sweep")
    args = cli.parse_args(argv)
    if args.action != "plan" and not shutil.which("sbatch" if args.action in ("submit", "resubmit") else "squeue"):
        print(f"bench-sweep {args.action}: Slurm's commands are not on PATH (no sbatch/squeue): run it on the "
              "cluster's login node, or try `make cluster-test` for a local one.", file=sys.stderr)
        return 2
    from bench.sweep import SweepError

    try:
        return {"submit": _submit, "status": _status, "resubmit": _resubmit, "wait": _wait,
                "plan": _plan}[args.action](args)
    except SweepError as exc:
        print(f"bench-sweep {args.action}: {exc}", file=sys.stderr)
        return 2


def _submit(args) -> int:
    from bench import runs
    from bench.preflight import preflight
    from bench.sweep import plan_tasks, submit_tasks

    tasks, plan = plan_tasks(list(args.target))
    report = preflight(plan)
    print(report.format())
    if report.problems:
        print(f"bench-sweep submit: preflight found {len(report.problems)} problem(s); nothing was submitted.",
              file=sys.stderr)
        return 2
    exp_dir = runs.experiment_dir(Path(plan.cfg.paths.results_dir).resolve(), plan.cfg.experiment_name)
    from bench.sweep.plan import planned_resources

    given = {a.split("=", 1)[0] for a in args.target}
    asks = [f"hydra.launcher.{k}={v}" for k, v in planned_resources(exp_dir).items()
            if k in ("timeout_min", "mem_gb") and f"hydra.launcher.{k}" not in given]
    if asks:
        print(f"from bench-sweep plan ({exp_dir / 'sweeps' / 'plan.json'}): {' '.join(asks)}")
    ledger = submit_tasks(tasks, [*args.target, *asks], exp_dir)
    from bench.sweep.submit import read_ledger

    ids = [t["job_id"] for t in read_ledger(ledger)["tasks"]]
    print(f"submitted {len(tasks)} run(s) as Slurm job(s) {ids[0]}{' .. ' + ids[-1] if len(ids) > 1 else ''}; "
          f"ledger {ledger}\nnext: bench-sweep status {exp_dir}")
    return 0


def _status(args) -> int:
    from bench.sweep import format_states, sweep_states

    exp_dir = Path(args.target[0])
    print(format_states(sweep_states(exp_dir), exp_dir))
    return 0


def _resubmit(args) -> int:
    from bench.sweep import sweep_states, submit_tasks
    from bench.sweep.status import ledgers
    from bench.sweep.submit import Task, read_ledger

    exp_dir, extra = Path(args.target[0]), list(args.target[1:])
    if not ledgers(exp_dir):
        print(f"bench-sweep resubmit: {exp_dir} has no submitted sweep; use bench-sweep submit.", file=sys.stderr)
        return 2
    redo = [s for s in sweep_states(exp_dir) if s.state in ("failed", "lost")]
    if not redo:
        print("nothing to resubmit: every run is completed, pending or running.")
        return 0
    from bench.sweep.submit import is_launcher_arg

    launcher = [a for a in read_ledger(ledgers(exp_dir)[-1])["args"] if is_launcher_arg(a)] + extra
    tasks = [Task(s.overrides, s.model, s.seed, s.run_dir) for s in redo]
    ledger = submit_tasks(tasks, launcher, exp_dir)
    print(f"resubmitted {len(tasks)} run(s) ({', '.join(f'{s.model}/seed{s.seed}' for s in redo)}); ledger {ledger}")
    return 0


def _wait(args) -> int:
    from tqdm.auto import tqdm

    from bench.sweep import format_states, sweep_states

    exp_dir = Path(args.target[0])
    states = sweep_states(exp_dir)
    with tqdm(total=len(states), desc="runs ended", unit="run") as bar:
        while True:
            ended = sum(s.state in ("completed", "failed", "lost") for s in states)
            bar.n = ended
            bar.refresh()
            if ended == len(states):
                break
            time.sleep(args.every)
            states = sweep_states(exp_dir)
    print(format_states(states, exp_dir))
    return 0 if all(s.state == "completed" for s in states) else 1


def _plan(args) -> int:
    from bench import runs
    from bench.preflight import preflight
    from bench.sweep import plan_tasks
    from bench.sweep.plan import format_plan, plan_sweep, write_plan

    tasks, plan = plan_tasks(list(args.target))
    report = preflight(plan)
    n_images = report.n_images
    if report.problems or not n_images:
        print(report.format())
        print("bench-sweep plan: " + ("the preflight found problems" if report.problems else
                                      "the number of images is unknown for this data") + "; nothing was measured.",
              file=sys.stderr)
        return 2
    costs, asks = plan_sweep(tasks, n_images, plan.cfg.trainer.device)
    exp_dir = runs.experiment_dir(Path(plan.cfg.paths.results_dir).resolve(), plan.cfg.experiment_name)
    print(format_plan(costs, asks))
    print(f"wrote {write_plan(exp_dir, costs, asks)}")
    return 0
