"""``bench-evaluate SOURCE DATA``: a run, an ensemble, or every completed run and ensemble of an
experiment, on another lab's labelled folder (:mod:`bench.predict.external`,
:mod:`bench.predict.experiment`). The command line only: parsing, calling, printing."""

from __future__ import annotations

import math
import sys
from typing import Sequence

from bench.predict.checkpoints import PredictError
from bench.predict.experiment import evaluate_experiment, is_experiment, load_preset, preset_mapping
from bench.predict.external import evaluate_external, parse_map


def main(argv: Sequence[str] | None = None) -> int:
    from bench.cli.commands import parser
    from bench.predict import prediction_device

    args = parser("bench-evaluate").parse_args(argv)
    try:
        mapping, name = parse_map(args.map), args.name
        if args.preset:
            preset = load_preset(args.preset)
            mapping, name = {**preset_mapping(preset, args.data_root), **mapping}, name or preset["name"]
            print(f"{preset['title']}: {preset['source']} ({preset['licence']}). Cite: {preset['citation']}")
        options = dict(mapping=mapping, name=name, batch_size=args.batch_size, device=prediction_device(args.device))
        if is_experiment(args.source):
            results = evaluate_experiment(args.source, args.data_root, **options)
            print(format_experiment(results))
            return 1 if any("error" in r for r in results) else 0
        m = evaluate_external(args.source, args.data_root, **options)
    except PredictError as exc:
        print(f"bench-evaluate: {exc}", file=sys.stderr)
        return 2
    print(format_one(m))
    return 0


def format_one(m: dict) -> str:
    lines = [f"{m['name']}: {m['n']} image(s) of {len(m['mapping'])} class(es); accuracy {m['accuracy']:.4f}, "
             f"balanced accuracy {m['balanced_accuracy']:.4f}, macro F1 {m['macro']['f1']:.4f} ({m['seconds']:.1f} s)"]
    for folder, cls in m["mapping"].items():
        scores = m["per_class"][cls]
        recall = "undefined" if scores["sensitivity"] is None else f"{scores['sensitivity']:.4f}"
        lines.append(f"  {folder} -> {cls}: {scores['support']} image(s), recall {recall}")
    if m.get("classes_absent"):
        lines.append(f"classes of the model with no image here (undefined, not zero): {', '.join(m['classes_absent'])}")
    cal = m.get("calibration")
    if cal:
        ref = cal["referral"]
        lines.append(f"calibration: ECE {cal['ece']:.4f} (with the run's temperature {cal['temperature']:.2f}: "
                     f"{cal['calibrated']['ece']:.4f}); referral at the validation threshold for "
                     f"{cal['target_acc']:.0%}: {_pct(ref['referred_share'])} sent to a person, accuracy on the rest "
                     f"{_pct(ref['acc_kept'])}")
    if m["left_out_folders"]:
        lines.append(f"left out (not a class of the model; --map to include): {', '.join(m['left_out_folders'])} "
                     f"({m['n_left_out']} image(s))")
    if m["n_unreadable"]:
        lines.append(f"{m['n_unreadable']} image(s) could not be decoded (unreadable.csv)")
    return "\n".join(lines)


def format_experiment(results: list[dict]) -> str:
    lines = [f"{'model':<40} {'acc':>7} {'bal acc':>8} {'macro F1':>9} {'ECE':>7} {'referred':>9}"]
    for r in results:
        label = r.get("source", "?").rstrip("/").split("/runs/")[-1].split("/ensembles/")[-1]
        if "error" in r:
            lines.append(f"{label:<40} FAILED: {r['error']}")
            continue
        cal = r.get("calibration") or {}
        ece = f"{cal['ece']:.4f}" if cal else "-"
        referred = _pct((cal.get("referral") or {}).get("referred_share")) if cal else "-"
        done = " (done before)" if r.get("skipped") else ""
        lines.append(f"{label:<40} {r['accuracy']:>7.4f} {r['balanced_accuracy']:>8.4f} {r['macro']['f1']:>9.4f} "
                     f"{ece:>7} {referred:>9}{done}")
    return "\n".join(lines)


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


if __name__ == "__main__":
    sys.exit(main())
