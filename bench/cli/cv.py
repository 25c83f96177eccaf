"""``bench-cv``: cross-validation, one run per fold (bench.protocols.cv). The command line only: parsing, calling, printing."""

from __future__ import annotations

import logging
import sys


from bench.protocols.cv import CV_FOLDS_CSV, CV_SUMMARY_CSV, format_summary, run_cv
from bench import runs


def main(argv: list[str] | None = None) -> int:
    """``bench-cv experiment=almotairi2019 data.root=/data/PBC`` (any Hydra overrides)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from bench.cli.checks import check_model_overrides, register_requested_timm_models
    from bench.preflight import plan_runs, preflight

    from bench.cli.commands import parser

    args = parser("bench-cv").parse_args(sys.argv[1:] if argv is None else argv)
    if any(a in ("-m", "--multirun") for a in args.overrides):
        print("bench-cv: runs folds one after another; -m sweeps are not supported (run one bench-cv per "
              "model, or cv.fold=i per job).", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    problem = check_model_overrides(args.overrides)
    if problem:
        print(f"bench-cv: {problem}", file=sys.stderr)
        return 2
    register_requested_timm_models(args.overrides)
    try:
        from bench.config import compose_config

        cfg = compose_config(args.overrides)
        report = preflight(plan_runs(args.overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        from bench.cli.checks import compose_hint

        print(f"bench-cv: the configuration does not compose: {compose_hint(args.overrides, exc)}", file=sys.stderr)
        return 2
    print(f"preflight:\n{report.format()}", file=sys.stderr)
    if not report.ok:
        print(f"bench-cv: preflight found {len(report.problems)} problem(s); nothing was trained.", file=sys.stderr)
        return 2
    try:
        if cfg.two_level.enabled and not (cfg.cv.folds or cfg.cv.repeats):
            from bench.protocols.two_level import run_two_level

            result = run_two_level(cfg)  # one two-level classifier on the holdout split
            print(f"two-level classifier: {result['status']} ({result['run_dir']})")
            return 0 if result["status"] != runs.STATUS_FAILED else 1
        out = run_cv(cfg)
    except ValueError as exc:
        print(f"bench-cv: {exc}", file=sys.stderr)
        return 2
    print(f"\nCross-validation summary ({out['exp_dir'] / CV_SUMMARY_CSV}; folds in {CV_FOLDS_CSV}):")
    print(format_summary(out["summary"]))
    failed = [r for r in out["results"] if r.get("status") == runs.STATUS_FAILED]
    for r in failed:
        print(f"  FAILED {r['run_dir']}: {r.get('error')}", file=sys.stderr)
    return 1 if failed else 0



if __name__ == "__main__":
    sys.exit(main())
