"""``bench-tune ... hydra/launcher=slurm``: the workers of the studies as Slurm array tasks, submitted and
walked away from.

Per model whose study is short of ``tune.trials``, ``tune.workers`` array tasks, all in one job array
(resources from ``hydra/launcher=slurm`` and the command line's ``hydra.launcher.*``, as bench-sweep asks
for them: :func:`bench.sweep.submit.executor_for`). Each task runs the worker loop a local worker runs
(:mod:`.study`) on the study's journal file, which the tasks share through the filesystem. The command
exits once they are submitted; the job ids are in ``<experiment>/tuning/slurm/<time>/jobs.json``.

Running the same command again while any of those jobs is queued or running prints where each study stands
and submits nothing: a second set of workers would take the first one's running trials for a dead
worker's. Once they have left the queue it shows each architecture's best configuration, and submits
workers again only for a study still short of its trials (a task killed, a node lost: its running trial
is then failed and retried once, as for a local worker).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from bench import runs
from bench.tune.study import TUNING_DIR, _worker

SLURM_DIR = "slurm"
JOBS_JSON = "jobs.json"


class TuneWorker:
    """One worker of one study, as submitit runs it on a node (pickled by reference to this module)."""

    def __init__(self, k: int, base: list[str], model: str, space: dict, exp_name: str, exp_dir: str, tune: dict,
                 select_by: str):
        self.args = (k, list(base), model, dict(space), exp_name, str(exp_dir), dict(tune), select_by)

    def __call__(self) -> dict:
        # What bench-train's Hydra job logging shows, in the task's log (submitit's <job>_<task>_log.out).
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s",
                            stream=sys.stdout, force=True)
        _worker(*self.args)
        return {"model": self.args[2], "worker": self.args[0]}


def is_slurm(launcher_args: list[str]) -> bool:
    """``hydra/launcher=slurm`` (or the plugin's own ``submitit_slurm``) among the launcher arguments."""
    return any(a.lstrip("+").split("=", 1) in (["hydra/launcher", "slurm"], ["hydra/launcher", "submitit_slurm"])
               for a in launcher_args)


def submit_workers(launcher_args: list[str], models: list[str], workers: int, base: list[str], space: dict,
                   exp_name: str, exp_dir: Path, tune: dict, select_by: str) -> Path:
    """``workers`` array tasks per model, one job array; returns the jobs.json that records them."""
    from bench.sweep import executor_for

    folder = Path(exp_dir) / TUNING_DIR / SLURM_DIR / time.strftime("%Y-%m-%d_%H-%M-%S")
    folder.mkdir(parents=True, exist_ok=True)
    executor = executor_for([*launcher_args, f"experiment_name={exp_name}"], folder / ".submitit")
    executor.update_parameters(name=f"bench-tune-{exp_name}".replace("/", "-"))
    plan = [(model, k) for model in models for k in range(max(1, workers))]
    with executor.batch():
        jobs = [executor.submit(TuneWorker(k, base, model, space, exp_name, str(exp_dir), tune, select_by))
                for model, k in plan]
    record = {"submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "launcher": list(launcher_args),
              "jobs": [{"job_id": str(j.job_id), "model": model, "worker": k} for (model, k), j in zip(plan, jobs)]}
    runs.write_json_atomic(folder / JOBS_JSON, record)
    return folder / JOBS_JSON


def latest_jobs(exp_dir) -> list[dict]:
    """The jobs of the experiment's latest submission of tuning workers (none: [])."""
    found = sorted((Path(exp_dir) / TUNING_DIR / SLURM_DIR).glob(f"*/{JOBS_JSON}"))
    return runs.read_json(found[-1])["jobs"] if found else []


def queued_jobs(exp_dir) -> list[dict]:
    """Those of :func:`latest_jobs` that squeue still lists (pending, running, ...), each with its ``state``."""
    from bench.sweep.status import queue_states

    jobs = latest_jobs(exp_dir)
    try:
        states = queue_states([j["job_id"] for j in jobs])
    except FileNotFoundError as exc:
        raise RuntimeError("squeue is not on PATH, so bench-tune cannot tell whether the workers it submitted "
                           "are still running; run it where the Slurm commands are (the login node).") from exc
    return [{**j, "state": states[j["job_id"]]} for j in jobs if j["job_id"] in states]
