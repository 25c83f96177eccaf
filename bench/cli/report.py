"""``bench-report``: report.md and its figures (bench.report). The command line only: parsing, calling, printing."""

from __future__ import annotations

import sys
import time
from typing import Sequence


from bench.report.run import build_report


def main(argv: Sequence[str] | None = None) -> int:
    from bench.cli.commands import parser

    args = parser("bench-report").parse_args(argv)
    from bench.report.cascade import build_cascade_report, is_cascade_dir

    if is_cascade_dir(args.exp_dir):  # a bench-predict --detector output folder
        from bench.predict.checkpoints import PredictError

        try:
            path = build_cascade_report(args.exp_dir, args.out)
        except (PredictError, OSError, ValueError) as exc:
            print(f"bench-report: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {path}")
        return 0
    if not (args.exp_dir / "runs").is_dir():
        print(f"bench-report: {args.exp_dir} has no runs/ folder. Pass an experiment folder written by "
              "bench-train (results/<experiment>, containing runs/<model>/seed<seed>/) or a smear-field folder "
              "written by bench-predict --detector.", file=sys.stderr)
        return 2
    if args.resamples < 1 or not 0 < args.confidence < 1 or not 0 < args.alpha < 1 or args.top < 1:
        print("bench-report: --resamples and --top must be at least 1; --confidence and --alpha in (0, 1).",
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    reference = None if args.no_reference else (args.reference or "default")
    try:
        path = build_report(args.exp_dir, args.out, top=args.top, n_resamples=args.resamples, seed=args.seed,
                            confidence=args.confidence, alpha=args.alpha, reference_dir=reference,
                            ensemble=args.ensemble)
    except ValueError as exc:
        print(f"bench-report: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} and its figures ({time.perf_counter() - start:.1f} s)")
    return 0



if __name__ == "__main__":
    sys.exit(main())
