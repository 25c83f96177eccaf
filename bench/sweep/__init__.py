"""Submit a sweep to Slurm and walk away (issue 28): ``bench-sweep submit`` composes and preflights the
whole sweep, submits it as one job array and exits, recording the jobs in the experiment's ledger
(``results/<experiment>/sweeps/<time>/ledger.json``); ``status`` reads the run folders and the
scheduler; ``resubmit`` sends again only what did not complete; ``wait`` blocks with a progress bar.

Modules: :mod:`.submit` (the tasks, the executor from ``hydra/launcher=slurm``'s settings, the
ledger) and :mod:`.status` (each task's state from its run folder and ``squeue``).
"""

from bench.sweep.status import TaskState, sweep_states, format_states, ledgers
from bench.sweep.submit import SweepError, Task, TrainTask, executor_for, is_launcher_arg, plan_tasks, submit_tasks

__all__ = ["TaskState", "sweep_states", "format_states", "ledgers", "SweepError", "Task", "TrainTask", "plan_tasks",
           "submit_tasks", "executor_for", "is_launcher_arg"]
