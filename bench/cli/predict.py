"""``bench-predict``: a folder of cells, or of smear fields with --detector (bench.predict, bench.cascade). The command line only: parsing, calling, printing."""

from __future__ import annotations

import sys
from typing import Sequence

import pandas as pd

from bench.predict.folder import PredictError, run


def main(argv: Sequence[str] | None = None) -> int:
    from bench.cli.commands import parser

    args = parser("bench-predict").parse_args(argv)
    if args.calibrated and (args.detector is not None or args.classifier):
        print("bench-predict: --calibrated applies to a folder of cells (-c / --ensemble); the smear chain types "
              "cells with the raw probabilities. Leave --calibrated out with --detector.", file=sys.stderr)
        return 2
    if args.detector is not None or args.classifier:
        from bench.cascade import run as cascade

        try:
            cascade.print_summary(cascade.run(args), args.out)
        except PredictError as exc:
            print(f"bench-predict: {exc}", file=sys.stderr)
            return 2
        return 0
    try:
        result = run(args)
    except PredictError as exc:
        print(f"bench-predict: {exc}", file=sys.stderr)
        return 2
    s = result["summary"]
    print(f"{s['n_classified']} image(s) classified with {len(s['checkpoints'])} checkpoint(s) "
          f"({s['method']}, {s['device']}, {s['seconds']:.1f} s); {s['n_unreadable']} unreadable; "
          f"probabilities {s['probabilities']}")
    counts = result["counts"]
    width = max(len("class"), *(len(c) for c in counts["class"]))
    print(f"\n{'class':<{width}}  {'count':>6}  {'percent':>7}  {'unsure':>6}  {'val recall':>10}")
    for row in counts.itertuples(index=False):
        unsure = "-" if pd.isna(row.n_low_confidence) else str(row.n_low_confidence)
        recall = "-" if pd.isna(row.val_recall) else f"{100 * row.val_recall:.1f}%"
        print(f"{row[0]:<{width}}  {row[1]:>6}  {row[2]:>6.2f}%  {unsure:>6}  {recall:>10}")
    low = s["low_confidence"]
    if low["threshold"] is not None:
        print(f"\n{low['n']} image(s) are low-confidence (confidence below {low['threshold']:.3f}: {low['rule']}); "
              "look at them before trusting the count (low_confidence in predictions.csv).")
    else:
        print(f"\nlow-confidence images are not flagged: {low['not_flagged_because']}.")
    if len(result["unreadable"]):
        print("\nunreadable:")
        for row in result["unreadable"].head(20).itertuples(index=False):
            print(f"  {row.path}: {row.reason}")
        if len(result["unreadable"]) > 20:
            print(f"  ... {len(result['unreadable']) - 20} more in unreadable.csv")
    print(f"\nwrote predictions.csv, counts.csv, unreadable.csv and summary.json in {args.out}")
    return 0



if __name__ == "__main__":
    sys.exit(main())
