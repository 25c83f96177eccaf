"""``bench-leaderboard``: an experiment's runs ranked (bench.results). The command line only: parsing, calling, printing."""

from __future__ import annotations

import sys
from typing import Sequence


from bench.results.leaderboard import LEADERBOARD_CSV, PER_CLASS_CSV, SUMMARY_CSV, format_leaderboard, write_leaderboard


def main(argv: Sequence[str] | None = None) -> int:
    from bench.cli.commands import parser

    args = parser("bench-leaderboard").parse_args(argv)

    if not (args.exp_dir / "runs").is_dir():
        print(
            f"bench-leaderboard: {args.exp_dir} has no runs/ folder, so there is nothing to rank. "
            "Pass an experiment folder as written by bench-train, i.e. one that contains "
            "runs/<model>/seed<seed>/status.json (for example results/<experiment>), "
            "and check that at least one run of that experiment has started.",
            file=sys.stderr,
        )
        return 2
    board = write_leaderboard(args.exp_dir)
    print(format_leaderboard(board, max_rows=args.max_rows))
    print(f"\nwrote {LEADERBOARD_CSV}, {PER_CLASS_CSV} and {SUMMARY_CSV} in {args.exp_dir}")
    return 0



if __name__ == "__main__":
    sys.exit(main())
