"""``bench-export``: a classifier run, an ensemble or a detector run in ONNX, OpenVINO or TorchScript with its
preprocessing contract, checked against PyTorch (bench.deploy). The command line only: parsing, calling, printing."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    from bench.cli.commands import parser

    args = parser("bench-export").parse_args(argv)
    try:
        import onnxscript  # noqa: F401
        if args.format != "torchscript":
            import onnx  # noqa: F401
        if args.format == "openvino":
            import openvino  # noqa: F401
    except ImportError as exc:
        print(f"bench-export: {exc.name} is not installed; pip install -e '.[deploy]' (onnx, onnxscript, onnxruntime, "
              "openvino).", file=sys.stderr)
        return 2
    from bench.deploy import ExportError, export_detector, export_ensemble, export_run
    from bench.ensemble.folders import MEMBERS_CSV
    from bench.predict import PredictError

    images = None
    if args.check_images:
        from bench.predict.images import list_images

        images, _ = list_images(args.check_images)
    try:
        if (args.run / MEMBERS_CSV).is_file():
            contract = export_ensemble(args.run, args.out, fmt=args.format, images=images)
            print(f"wrote {args.out}: {len(contract['members'])} member exports ({args.format}, each checked against "
                  f"PyTorch), members.csv and ensemble.json ({contract['voting']} vote); "
                  f"bench-predict --ensemble {args.out}")
            return 0
        if _is_detector(args.run):
            contract = export_detector(args.run, args.out, fmt=args.format, fields=images)
            check = contract["check"]
            print(f"wrote {Path(args.out) / contract['file']} and model.json ({contract['model']}, labels "
                  f"{', '.join(contract['labels'])}, fields resized to {contract['input_size']} px on the longer side); "
                  f"checked on {check['fields']} validation field(s), {check['boxes_compared']} kept boxes, on "
                  f"{', '.join(check['backends'])}; bench-predict FIELDS --detector {args.out} --classifier CLS")
            return 0
        contract = export_run(args.run, args.out, fmt=args.format, images=images)
    except (ExportError, PredictError) as exc:
        print(f"bench-export: {exc}", file=sys.stderr)
        return 2
    check = contract["check"]
    print(f"wrote {Path(args.out) / contract['file']} and model.json ({contract['model']}, {len(contract['classes'])} "
          f"classes, {contract['input_size']} px); checked on {check['images']} validation image(s) with "
          f"{', '.join(check['backends'])}: max |probability difference| {check['max_abs_prob_diff']:.1e}, same class "
          f"for all; bench-predict IMAGES -c {args.out}")
    return 0


def _is_detector(path: Path) -> bool:
    """A detector run folder or best.pt (its metrics.json says task detection; else the checkpoint does)."""
    import json

    folder = path if path.is_dir() else path.parent
    try:
        return json.loads((folder / "metrics.json").read_text()).get("task") == "detection"
    except (OSError, ValueError):
        pass
    try:
        import torch

        ckpt = torch.load(folder / "best.pt" if path.is_dir() else path, map_location="cpu", weights_only=True)
        return isinstance(ckpt, dict) and ckpt.get("task") == "detection"
    except Exception:
        return False
