"""The tasks of a sweep, their submission as one Slurm job array, and the ledger that remembers them.

A task is one run: the override list bench-train's sweeper would give it (the command line's values,
an experiment file's ``hydra.sweeper.params``, every combination), composed again on the compute node
by :class:`TrainTask`, which is what submitit pickles. ``paths.results_dir`` and ``paths.cache_dir``
are made absolute at submission, so the task finds them from any working directory.

The job array takes its resources from ``hydra/launcher=slurm`` (conf/hydra/launcher/slurm.yaml) and
the command line's ``hydra.launcher.*`` overrides, so ``bench-sweep submit`` and
``bench-train -m ... hydra/launcher=slurm`` ask Slurm for the same thing.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import runs

LEDGER = "ledger.json"
SWEEPS_DIR = "sweeps"


class SweepError(ValueError):
    """Bad input for bench-sweep: the message says what and how to fix it."""


class TrainTask:
    """One run of the sweep, as submitit runs it on a node: compose, train, return the run's summary.
    ``checkpoint`` makes it requeueable (submitit calls it on the scheduler's warning)."""

    def __init__(self, overrides: list[str]):
        self.overrides = list(overrides)

    def __call__(self) -> dict:
        import logging

        from bench.config import compose_config
        from bench.training import run_training

        # What bench-train's Hydra job logging shows, in the task's log (submitit's <job>_<task>_log.out).
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s",
                            stream=sys.stdout, force=True)

        out = run_training(compose_config(self.overrides))
        return {k: out.get(k) for k in ("status", "run_dir", "error")}

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(TrainTask(self.overrides), *args, **kwargs)


@dataclass
class Task:
    overrides: list[str]
    model: str
    seed: int
    run_dir: str


def plan_tasks(args: list[str]) -> tuple[list[Task], object]:
    """Every run of ``args`` (a bench-train command line, with or without -m) as a :class:`Task`, and the
    preflight plan (checked by the caller)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from bench.config import compose_config
    from bench.preflight import plan_runs

    # The launcher's settings are the executor's (executor_for), not a run's.
    args = [a for a in args if a not in ("-m", "--multirun") and not is_launcher_arg(a)]
    plan = plan_runs(["-m", *args])
    parser = OverridesParser.create()
    base, elements = [], {}
    for o in parser.parse_overrides(args):
        if o.is_sweep_override():
            elements[o.key_or_group] = o.get_key_element()
        elif not o.key_or_group.startswith("hydra"):
            base.append(o.input_line)
    keys = list(plan.swept)
    tasks = []
    for values in itertools.product(*(plan.swept[k] for k in keys)) if keys else [()]:
        overrides = [*base, *(f"{elements.get(k, k)}={v}" for k, v in zip(keys, values))]
        cfg = compose_config(overrides)
        overrides += [f"paths.results_dir={Path(cfg.paths.results_dir).resolve()}"]
        if cfg.paths.cache_dir:
            overrides += [f"paths.cache_dir={Path(cfg.paths.cache_dir).resolve()}"]
        run_dir = runs.RunDir.for_run(runs.experiment_dir(Path(cfg.paths.results_dir).resolve(), cfg.experiment_name),
                                      cfg.model.name, cfg.seed)
        tasks.append(Task(overrides, cfg.model.name, int(cfg.seed), str(run_dir.root)))
    return tasks, plan


def is_launcher_arg(arg: str) -> bool:
    """``hydra.launcher.KEY=...`` (also ``+``/``++`` forms, which add to a map such as
    additional_parameters) and ``hydra/launcher=...``: the executor's settings, not a run's."""
    return arg.lstrip("+").startswith(("hydra.launcher.", "hydra/launcher="))


def executor_for(args: list[str], folder: Path):
    """A submitit Slurm executor asking for what ``hydra/launcher=slurm`` (with the command line's
    ``hydra.launcher.*`` overrides) asks for."""
    import submitit
    from omegaconf import OmegaConf

    from bench.config import compose_config

    launcher_args = [a for a in args if is_launcher_arg(a) or a.startswith(("experiment=", "experiment_name="))]
    launcher_args = [a for a in launcher_args if not a.lstrip("+").startswith("hydra/launcher=")]
    cfg = compose_config(["hydra/launcher=slurm", *launcher_args], return_hydra_config=True)
    ln = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster="slurm",
                                     slurm_max_num_timeout=int(ln.get("max_num_timeout") or 0))
    params = {"timeout_min": ln.get("timeout_min"), "cpus_per_task": ln.get("cpus_per_task"),
              "mem_gb": ln.get("mem_gb"), "gpus_per_node": ln.get("gpus_per_node"),
              "tasks_per_node": ln.get("tasks_per_node"), "nodes": ln.get("nodes"),
              "name": f"bench-{cfg.experiment_name}".replace("/", "-"),
              "slurm_partition": ln.get("partition"), "slurm_qos": ln.get("qos"), "slurm_account": ln.get("account"),
              "slurm_constraint": ln.get("constraint"), "slurm_gres": ln.get("gres"),
              "slurm_array_parallelism": ln.get("array_parallelism"), "slurm_signal_delay_s": ln.get("signal_delay_s"),
              "slurm_additional_parameters": ln.get("additional_parameters") or None,
              "slurm_setup": ln.get("setup") or None}
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor


def submit_tasks(tasks: list[Task], args: list[str], exp_dir: Path) -> Path:
    """Submit ``tasks`` as one job array; write and return the ledger (job id per task)."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    folder = Path(exp_dir) / SWEEPS_DIR / stamp
    folder.mkdir(parents=True, exist_ok=True)
    executor = executor_for(args, folder / ".submitit")
    with executor.batch():
        jobs = [executor.submit(TrainTask(t.overrides)) for t in tasks]
    ledger = {"submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "args": list(args),
              "tasks": [{"job_id": str(j.job_id), "model": t.model, "seed": t.seed, "run_dir": t.run_dir,
                         "overrides": t.overrides} for t, j in zip(tasks, jobs)]}
    runs.write_json_atomic(folder / LEDGER, ledger)
    return folder / LEDGER


def read_ledger(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SweepError(f"cannot read the sweep ledger {path} ({exc}).") from exc
