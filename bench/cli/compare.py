"""``bench-compare``: an experiment's variants side by side (bench.protocols.compare). The command line only: parsing, calling, printing."""

from __future__ import annotations

import sys
from typing import Optional, Sequence

import pandas as pd

from bench.protocols.compare import find_variants, format_comparison, variant_differences, write_comparison


def main(argv: Optional[Sequence[str]] = None) -> int:
    from bench.cli.commands import parser

    cli = parser("bench-compare")
    args = cli.parse_args(argv)
    variants = args.variants or find_variants(args.exp_dir)
    missing = [v for v in variants if not (args.exp_dir / v / "runs").is_dir()]
    if not variants or missing:
        print(f"{cli.prog}: {args.exp_dir} has no variant folder{'s ' + ', '.join(missing) if missing else 's'} "
              "with runs/ (expected e.g. scratch/runs and frozen/runs, as written by "
              "bench-train -m experiment=scratch_vs_pretrained).", file=sys.stderr)
        return 2
    path = write_comparison(args.exp_dir, variants)
    print(format_comparison(pd.read_csv(path), variants))
    differences = variant_differences(args.exp_dir, variants)
    if differences:
        print("\nthe variants differ in (" + " | ".join(variants) + "):\n  " + "\n  ".join(differences))
    print(f"\nwrote {path}")
    return 0



if __name__ == "__main__":
    sys.exit(main())
