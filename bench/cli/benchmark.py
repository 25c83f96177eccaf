"""``bench-benchmark``: training speed against each model's own ceiling and a plain reference loop
(:mod:`bench.benchmark`). The command line only; ``_reference`` is the reference loop's own
process (started by the benchmark, parsed by :func:`bench.benchmark.reference.reference_main`: a
plain training script does its own parsing, and that start-up is part of what it measures).
"""

from __future__ import annotations

import sys

from bench.benchmark.common import MODES
from bench.benchmark.reference import reference_main
from bench.benchmark.run import run_benchmark


def parse_args(argv):
    from bench.cli.commands import parser

    p = parser("bench-benchmark")
    args = p.parse_args(argv)
    modes = args.ceiling_modes.split(",")
    unknown = [m for m in modes if m not in {m for m, _, _ in MODES}]
    if unknown:
        p.error(f"--ceiling-modes: unknown {unknown}; choose from {[m for m, _, _ in MODES]}")
    return args



def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["_reference"]:
        return reference_main(argv[1:])
    return run_benchmark(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
