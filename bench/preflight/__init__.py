"""Before the first model trains: what will run (:class:`Plan`, from the command line as Hydra's
sweeper will expand it) and can it run (:func:`preflight`: every problem at once, in seconds).
The checks live in :mod:`.data`, :mod:`.models` and :mod:`.resources`.
"""

from bench.preflight.plan import plan_runs, preflight
from bench.preflight.report import Plan, Report

__all__ = ["Plan", "Report", "plan_runs", "preflight"]
