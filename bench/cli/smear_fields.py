"""``python -m bench.cli.smear_fields OUT [--n 24] [--seed 1] [--size 256]``: fresh synthetic smear fields
with their true boxes (:func:`bench.detection.synthetic.write_fields`), for trying the smear chain
with truth (``make smear-demo``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.detection.synthetic import write_fields


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cli.smear_fields", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="a new folder: images/field-XXXX.png and instances.json")
    p.add_argument("--n", type=int, default=24, help="number of fields (default 24)")
    p.add_argument("--seed", type=int, default=1, help="seed (default 1; the training fields use 0)")
    p.add_argument("--size", type=int, default=256, help="field side in pixels (default 256)")
    args = p.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        p.error(f"{args.out} exists and is not empty; pass a new folder")
    write_fields(args.out, n=args.n, seed=args.seed, size=args.size)
    print(f"wrote {args.n} fields to {args.out}/images and their boxes to {args.out}/instances.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
