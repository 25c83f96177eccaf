"""``bench-svm``: SVMs on frozen-CNN features (bench.protocols.svm_features). The command line only: parsing, calling, printing."""

from __future__ import annotations

import logging
import sys
from typing import Optional


from bench.protocols.svm_features import parse_kernel, run_svm_protocol
from bench import runs


def main(argv: Optional[list[str]] = None) -> int:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from bench.config import compose_config
    from bench.results.leaderboard import build_leaderboard, format_leaderboard
    from bench.results.ranking import ranking_text
    from bench.models import UnknownModelError, get_model_spec

    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        from bench.cli.commands import print_help

        print_help("bench-svm")
        return 0
    if any(a in ("-m", "--multirun") for a in args):
        print("bench-svm: no -m: one invocation runs every svm.feature_models x svm.kernels; list them with "
              "svm.feature_models=[vgg16,inception_v3] svm.kernels=[rbf,cubic].", file=sys.stderr)
        return 2
    try:
        cfg = compose_config(args)
        for name in cfg.svm.feature_models:
            get_model_spec(name)
        for kernel in cfg.svm.kernels:
            parse_kernel(kernel)
    except (HydraException, OmegaConfBaseException) as exc:
        from bench.cli.checks import compose_hint

        print(f"bench-svm: the configuration does not compose: {compose_hint(args, exc)}", file=sys.stderr)
        return 2
    except (UnknownModelError, ValueError) as exc:
        print(f"bench-svm: {exc}", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    results = run_svm_protocol(cfg)
    exp_dir = runs.experiment_dir(cfg.paths.results_dir, cfg.experiment_name)
    if (exp_dir / "runs").is_dir():
        board = build_leaderboard(exp_dir)
        print(f"\nLeaderboard of {exp_dir} ({ranking_text(board)}):")
        print(format_leaderboard(board))
    failed = [r for r in results if r["status"] == runs.STATUS_FAILED]
    for r in failed:
        print(f"  {r['model']} seed {r['seed']}: {r['error']} ({r['run_dir']})", file=sys.stderr)
    return 1 if failed else 0



if __name__ == "__main__":
    sys.exit(main())
