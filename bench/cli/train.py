"""``bench-train``: fine-tune and evaluate one architecture (or sweep many with ``-m``).

The command line only: ``hydra_main`` is a thin ``@hydra.main`` over
:func:`bench.training.run_training` (``train`` here, the whole job for one model, pure Python:
tests call it directly) and ``cli`` the console script, which checks names and values and runs
the preflight before Hydra starts, logs the sweep's progress, and turns failed runs into a
non-zero exit status at the end of a sweep.
"""

from __future__ import annotations

import gc
import logging
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from bench import runs
from bench.training.progress import duration_text
from bench.config import CONF_DIR
from bench.training import run_training as train

log = logging.getLogger("bench.train")

# Hydra flags that print something and train nothing: they skip the preflight and go to Hydra as they are.
HYDRA_INFO_FLAGS = ("--help", "-h", "--cfg", "-c", "--info", "-i", "--hydra-help", "--shell-completion", "-sc",
                    "--resolve", "--package", "-p")

_RESULTS: list[dict] = []  # what this process's runs returned (read by cli at the end)
_SWEEP: dict = {}  # planned run count and start time of a bench-train command (for progress lines)


# --------------------------------------------------------------------------- entry points


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    from bench.config.keys import expand_user_paths

    result = train(expand_user_paths(cfg))
    _RESULTS.append(result)
    _log_sweep_progress(_RESULTS, _SWEEP)
    # What a hyper-parameter sweeper optimises: the validation number of trainer.select_by, the one
    # that picked the best epoch and ranks the leaderboard (None for a failed run).
    return result.get("val_score")


def _log_sweep_progress(results: list[dict], sweep: dict) -> None:
    """One line after each run of a sweep: how many are done, failed and skipped, and the time."""
    total = sweep.get("total", 0)
    if total <= 1:
        return
    count = {s: sum(r["status"] == s for r in results) for s in (runs.STATUS_FAILED, "skipped")}
    elapsed = time.perf_counter() - sweep["start"]
    log.info("sweep: %d of %d run(s) done (%d failed, %d already complete) after %s", len(results), total,
             count[runs.STATUS_FAILED], count["skipped"], duration_text(elapsed))


def cli(argv: list[str] | None = None) -> int:
    """Console script: validate names and run the preflight, run Hydra, then print the
    leaderboard and exit non-zero if any run failed."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from bench.cli.checks import check_model_overrides, compose_hint, register_requested_timm_models
    from bench.config import register_configs
    from bench.preflight import plan_runs, preflight

    args = sys.argv[1:] if argv is None else argv
    problem = check_model_overrides(args)
    if problem:
        print(f"bench-train: {problem}", file=sys.stderr)
        return 2
    register_configs()
    register_requested_timm_models(args)
    if not any(a.startswith(HYDRA_INFO_FLAGS) for a in args):
        try:
            plan = plan_runs(args)
        except (HydraException, OmegaConfBaseException) as exc:
            print(f"bench-train: the configuration does not compose: {compose_hint(args, exc)}", file=sys.stderr)
            return 2
        if plan.cfg.cv.folds or plan.cfg.cv.repeats or plan.cfg.two_level.enabled:
            print(f"bench-train: experiment_name={plan.cfg.experiment_name} is a cross-validation protocol "
                  "(cv.folds, cv.repeats or two_level.enabled is set), which bench-train would silently run as "
                  "one ordinary split. Run it with `bench-cv` and the same arguments.", file=sys.stderr)
            return 2
        report = preflight(plan)
        print(f"preflight for {plan.n_runs} run(s) ({', '.join(plan.models[:6])}"
              f"{', ...' if len(plan.models) > 6 else ''}):\n{report.format()}", file=sys.stderr)
        if not report.ok:
            print(f"bench-train: preflight found {len(report.problems)} problem(s); nothing was trained.",
                  file=sys.stderr)
            return 2
    else:
        plan = None
    _RESULTS.clear()
    _SWEEP.clear()
    if plan is not None:
        _SWEEP.update(total=plan.n_runs, start=time.perf_counter())
    # Hydra's argparse wants flags before overrides; accept `-m` anywhere on the line.
    flags = [a for a in args if a in ("-m", "--multirun")]
    sys.argv = [sys.argv[0], *flags, *[a for a in args if a not in flags]]
    # What is alive now (torch, hydra, the model zoo: ~10^6 objects) lives as long as the
    # process: keep it out of the collector, so the collection after each run of a sweep
    # looks at that run's objects only (2 ms instead of 0.2 s).
    gc.freeze()
    hydra_main()
    return _report(_RESULTS, plan)


def _report(results: list[dict], plan) -> int:
    """End-of-sweep summary. Runs launched in other processes (submitit) are read back
    from the leaderboard, since their return values never reach this process."""
    from bench.results.leaderboard import build_leaderboard, format_leaderboard
    from bench.results.ranking import ranking_text

    if plan is None:
        return 0
    exp_dirs = sorted({str(Path(r["run_dir"]).parents[2]) for r in results}) or [
        str(runs.experiment_dir(plan.cfg.paths.results_dir, plan.cfg.experiment_name))]
    failed = [r for r in results if r["status"] == runs.STATUS_FAILED]
    for exp_dir in exp_dirs:
        if not (Path(exp_dir) / "runs").is_dir():
            continue
        board = build_leaderboard(exp_dir)
        if plan.multirun:
            print(f"\nLeaderboard of {exp_dir} ({ranking_text(board)}):")
            print(format_leaderboard(board))
        if not results:  # remote launcher: failures of the planned runs, from the run folders
            planned = {(m, s) for m in plan.models for s in plan.seeds}
            for row in board[board["status"] == runs.STATUS_FAILED].itertuples():
                if (row.model, int(row.seed)) in planned:
                    failed.append({"model": row.model, "seed": int(row.seed), "error": row.error,
                                   "run_dir": exp_dir})
    if failed:
        print(f"\n{len(failed)} run(s) failed:", file=sys.stderr)
        for r in failed:
            print(f"  {r['model']} seed {r['seed']}: {r['error']} ({r['run_dir']})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # python -m bench.cli.train ...
    from bench.cli.commands import run

    sys.exit(run("bench-train"))
