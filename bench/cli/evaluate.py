"""``bench-evaluate``: a run or ensemble on another lab's labelled folder (bench.predict.external). The command line only: parsing, calling, printing."""

from __future__ import annotations

import sys
from typing import Sequence


from bench.predict.external import PredictError, evaluate_external, parse_map


def main(argv: Sequence[str] | None = None) -> int:
    from bench.cli.commands import parser

    args = parser("bench-evaluate").parse_args(argv)
    try:
        from bench.predict import prediction_device

        m = evaluate_external(args.source, args.data_root, mapping=parse_map(args.map), name=args.name,
                              batch_size=args.batch_size, device=prediction_device(args.device))
    except PredictError as exc:
        print(f"bench-evaluate: {exc}", file=sys.stderr)
        return 2
    print(f"{m['name']}: {m['n']} image(s) of {len(m['mapping'])} class(es); accuracy {m['accuracy']:.4f}, "
          f"balanced accuracy {m['balanced_accuracy']:.4f}, macro F1 {m['macro']['f1']:.4f} ({m['seconds']:.1f} s)")
    for folder, cls in m["mapping"].items():
        scores = m["per_class"][cls]
        recall = "undefined" if scores["sensitivity"] is None else f"{scores['sensitivity']:.4f}"
        print(f"  {folder} -> {cls}: {scores['support']} image(s), recall {recall}")
    if m["left_out_folders"]:
        print(f"left out (not a class of the model; --map to include): {', '.join(m['left_out_folders'])} "
              f"({m['n_left_out']} image(s))")
    if m["n_unreadable"]:
        print(f"{m['n_unreadable']} image(s) could not be decoded (unreadable.csv)")
    return 0



if __name__ == "__main__":
    sys.exit(main())
