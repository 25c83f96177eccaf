"""``bench-export``: a run's best.pt as ONNX with its preprocessing contract, checked against PyTorch
(bench.deploy). The command line only: parsing, calling, printing."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    from bench.cli.commands import parser

    cli = parser("bench-export")
    args = cli.parse_args(argv)
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        print(f"bench-export: {exc.name} is not installed; pip install -e '.[deploy]' (onnx, onnxscript, "
              "onnxruntime).", file=sys.stderr)
        return 2
    from bench.deploy import ExportError, export_onnx
    from bench.predict import PredictError

    images = None
    if args.check_images:
        from bench.predict.images import list_images

        images, _ = list_images(args.check_images)
    from bench.ensemble.folders import MEMBERS_CSV

    try:
        if (args.run / MEMBERS_CSV).is_file():
            from bench.deploy import export_ensemble

            contract = export_ensemble(args.run, args.out, images=images)
            print(f"wrote {args.out}: {len(contract['members'])} member exports (each checked against PyTorch), "
                  f"members.csv and ensemble.json ({contract['voting']} vote); bench-predict --ensemble {args.out}")
            return 0
        contract = export_onnx(args.run, args.out, images=images)
    except (ExportError, PredictError) as exc:
        print(f"bench-export: {exc}", file=sys.stderr)
        return 2
    check = contract["check"]
    print(f"wrote {Path(args.out) / 'model.onnx'} and model.json ({contract['model']}, {len(contract['classes'])} "
          f"classes, {contract['input_size']} px); checked on {check['images']} validation image(s): max |probability "
          f"difference| {check['max_abs_prob_diff']:.1e}, same class for all")
    return 0
