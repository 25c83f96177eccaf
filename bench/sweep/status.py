"""Where each task of an experiment's submitted sweeps stands: its run folder (status.json, history.csv)
and the scheduler (``squeue``). A task whose job left the queue without a finished run is ``lost``."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench import runs
from bench.sweep.submit import LEDGER, SWEEPS_DIR, read_ledger


@dataclass
class TaskState:
    model: str
    seed: int
    run_dir: str
    job_id: str
    overrides: list[str]
    state: str  # pending | running | completed | failed | lost
    scheduler: str  # squeue's state, or "-" when the job is no longer in the queue
    detail: str


def ledgers(exp_dir) -> list[Path]:
    """The experiment's ledgers, oldest first."""
    return sorted((Path(exp_dir) / SWEEPS_DIR).glob(f"*/{LEDGER}"))


def queue_states(job_ids: list[str]) -> dict[str, str]:
    """squeue's state per job id (array tasks as ``<array>_<task>``); jobs no longer queued are absent."""
    if not job_ids:
        return {}
    done = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(sorted({j.split("_")[0] for j in job_ids}))],
                          capture_output=True, text=True, timeout=60)
    states = {}
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1].lower()
    return states


def sweep_states(exp_dir) -> list[TaskState]:
    """One state per run of the experiment's sweeps (the latest submission of a run wins)."""
    latest: dict[str, dict] = {}
    for path in ledgers(exp_dir):
        for task in read_ledger(path)["tasks"]:
            latest[task["run_dir"]] = task
    queued = queue_states([t["job_id"] for t in latest.values()])
    return [_state(task, queued.get(task["job_id"])) for task in latest.values()]


def _state(task: dict, scheduler: str | None) -> TaskState:
    rd = runs.RunDir(Path(task["run_dir"]))
    status = rd.read_status() or {}
    state, detail = status.get("status"), ""
    if state == runs.STATUS_COMPLETED:
        detail = _headline(rd)
    elif state == runs.STATUS_FAILED:
        detail = str(status.get("error") or "").splitlines()[0][:120] if status.get("error") else ""
    elif scheduler in ("running", "completing", "configuring") or (state == runs.STATUS_RUNNING and scheduler):
        state, detail = "running", _epoch(rd)
    elif scheduler:
        state = "pending"
    else:  # out of the queue without a finished run: killed, node lost, out of requeues
        state, detail = "lost", ("stopped at " + _epoch(rd)) if rd.history.is_file() else "never started"
    return TaskState(task["model"], int(task["seed"]), task["run_dir"], task["job_id"], task["overrides"], state,
                     scheduler or "-", detail)


def _epoch(rd: runs.RunDir) -> str:
    try:
        history = pd.read_csv(rd.history)
    except (OSError, ValueError):
        return "epoch 0"
    last = history.iloc[-1]
    val = next((f"{c} {last[c]:.4f}" for c in ("val_acc", "val_map") if c in history), "")
    return f"epoch {int(last['epoch'])}, {val}".rstrip(", ")


def _headline(rd: runs.RunDir) -> str:
    try:
        metrics = runs.read_json(rd.metrics)
    except (OSError, ValueError):
        return ""
    return f"val acc {metrics['val'].get('accuracy', float('nan')):.4f}, test acc {metrics['test'].get('accuracy', float('nan')):.4f}"


def format_states(states: list[TaskState], exp_dir) -> str:
    """The table and what to run next."""
    if not states:
        return f"{exp_dir} has no submitted sweep (bench-sweep submit ... writes {SWEEPS_DIR}/<time>/{LEDGER})."
    width = max(len(f"{s.model}/seed{s.seed}") for s in states)
    lines = [f"{'run'.ljust(width)}  {'state':9}  {'job':10}  {'scheduler':10}  detail"]
    for s in sorted(states, key=lambda s: (s.model, s.seed)):
        lines.append(f"{f'{s.model}/seed{s.seed}'.ljust(width)}  {s.state:9}  {s.job_id:10}  {s.scheduler:10}  {s.detail}")
    counts = pd.Series([s.state for s in states]).value_counts()
    lines.append(", ".join(f"{n} {k}" for k, n in counts.items()))
    redo = [s for s in states if s.state in ("failed", "lost")]
    if redo:
        lines.append(f"next: bench-sweep resubmit {exp_dir}   ({len(redo)} run(s) to send again; completed runs are "
                     "never trained again)")
    elif any(s.state in ("pending", "running") for s in states):
        lines.append(f"next: bench-sweep wait {exp_dir}, or come back later")
    else:
        lines.append(f"next: bench-ensemble {exp_dir} and bench-report {exp_dir}")
    return "\n".join(lines)
