"""``bench-predict FIELDS --detector DET --classifier CLS --out OUT``: the chain's output folder.

::

    OUT/
        cells.csv             one row per kept box: field, cell, box (field pixels), detector label and score,
                              classified, cell_type, confidence, low_confidence, classifier, prob_<class>
        counts.csv            per field and in total: every detector label, the typed cells by class, percentages
        unreadable.csv        fields that could not be decoded, and other files skipped
        fields/<field>.png    each field with its boxes and classes drawn, and a legend
        summary.json          models, thresholds, the detector's cap and the fields that reached it, typed labels,
                              counts, fields the detector saw (--allow-seen-fields), time; summary.md for a person
        cascade_metrics.json  with --truth: the chain scored against the annotations (bench.cascade.scoring)

Before the first field: the models are of the kind their option says, the truth's labels fit the
score level (or the options that would fit are named), OUT is new, empty or an earlier chain
output of these fields (replaced whole), and no field was seen by the detector in training
(:mod:`bench.cascade.guards`).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
from pathlib import Path

import pandas as pd

from bench import runs
from bench.cascade import draw, guards, scoring, tables
from bench.cascade.chain import run_chain
from bench.cascade.models import load_classifier, load_detector, parse_classifier_args, route_labels
from bench.data.imagefolder import IMAGE_EXTENSIONS
from bench.ensemble.voting import HARD
from bench.predict.checkpoints import PredictError
from bench.predict.images import list_images

log = logging.getLogger(__name__)

UPSAMPLING_WARN = 2.0  # crops enlarged more than this to reach the classifier's input: a scale mismatch
CELLS_CSV, COUNTS_CSV, SUMMARY_JSON, METRICS_JSON = "cells.csv", "counts.csv", "summary.json", "cascade_metrics.json"


def check_args(args: argparse.Namespace) -> None:
    if args.detector is None:
        raise PredictError("--classifier types the cells a detector finds in smear fields: add --detector DET (a "
                           "detector run folder). For folders of single-cell images use -c PT or --ensemble DIR.")
    if not args.images_dir.is_dir():
        raise PredictError(f"{args.images_dir} is not a folder. Pass the folder of smear fields "
                           f"(any of {', '.join(IMAGE_EXTENSIONS)}, searched recursively).")
    if not args.classifier:
        raise PredictError("--detector needs --classifier CLS (a best.pt, run folder or ensemble folder), or "
                           "--classifier LABEL=CLS for each detector label to type.")
    if args.checkpoint or args.ensemble:
        raise PredictError("with --detector, give the cell classifier as --classifier (-c and --ensemble are for "
                           "folders of single-cell images).")
    if not 0.0 <= args.margin <= 2.0:
        raise PredictError(f"--margin {args.margin}: the fraction of the box added on each side, 0 to 2 "
                           "(0.25: a crop 1.5 times the box).")
    if args.crop_size is not None and args.crop_size < 1:
        raise PredictError(f"--crop-size {args.crop_size}: a side in field pixels, at least 1.")
    if args.batch_size < 1:
        raise PredictError(f"--batch-size must be at least 1, got {args.batch_size}.")


def run(args: argparse.Namespace) -> dict:
    """The whole chain for the command line; returns the summary, counts and metrics. Every input is
    checked before the first field (the folders, the models, the truth's labels, fields the detector
    saw); the output is written aside and swapped in whole at the end."""
    from bench.predict import prediction_device

    check_args(args)
    files, skipped = list_images(args.images_dir)
    if not files:
        raise PredictError(f"{args.images_dir} holds no image files ({', '.join(IMAGE_EXTENSIONS)}); a count of "
                           "nothing would read as zero cells. Pass the folder of the smear fields.")
    replaces = guards.replaces_previous(args.out, args.images_dir)
    device = prediction_device(args.device)
    detector, routes, rule, classes = load_models(args, device)
    truth = read_checked_truth(args, classes, detector)
    seen = guards.seen_fields(files, args.images_dir, detector.path)
    notes = [*guards.seen_warnings(seen, len(files), detector.path, args.allow_seen_fields), *detector.notes]

    result = run_chain(files, args.images_dir, detector, routes, margin=args.margin, batch_size=args.batch_size,
                       device=device, crop_size=args.crop_size, progress=not args.quiet)
    if not result.fields:
        raise PredictError(unreadable_message(args.images_dir, result.unreadable))
    counts = tables.count_table(result.cells, result.fields, detector.labels, classes, seen)
    warnings = [*notes, *scale_warnings(result.upsampling), *cap_warnings(result.fields_at_cap, detector)]
    metrics = None
    if truth is not None:
        metrics = scoring.score_cells(result.cells, result.fields, truth, level=args.score_level,
                                      typed_classes=classes, truth_name=str(args.truth))
        warnings += metrics["warnings"]
        scoring.label_metrics(metrics, seen, notes)
    for w in warnings:
        log.warning("%s", w)
    summary = {**summarise(args, result, detector, routes, rule, classes, counts, warnings, device, len(files), seen),
               "notes": notes}
    staged = guards.staging_folder(args.out)
    try:
        write_outputs(args, staged, result, skipped, detector, classes, truth, counts, summary, metrics)
        guards.publish(staged, args.out, replaces)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return {"summary": summary, "counts": counts, "metrics": metrics, "cells": result.cells, "replaced": replaces}


def load_models(args: argparse.Namespace, device) -> tuple:
    """The detector, which classifier types each of its labels (and why), and the classes typed."""
    detector = load_detector(args.detector, device, args.score_threshold, getattr(args, "backend", None))
    sources = parse_classifier_args(args.classifier)
    loaded = {key: load_classifier(path, device, args.method, getattr(args, "backend", None))
              for key, path in sources.items()}
    requested = [s.strip() for s in (args.classify_labels or "").split(",") if s.strip()] or None
    routes, rule = route_labels(detector, loaded, requested)
    classes = list(dict.fromkeys(c for clf in routes.values() for c in clf.class_names))
    return detector, routes, rule, classes


def read_checked_truth(args: argparse.Namespace, classes: list[str], detector):
    """``--truth`` read, and its labels checked against what will be scored, before the long part."""
    if args.truth is None:
        return None
    truth = scoring.read_truth(args.truth, args.images_dir, scoring.parse_map(args.truth_map))
    scope = classes if args.score_level == "cell" and classes else detector.labels
    scoring.check_labels(scope, truth.classes, args.score_level, detector.labels)
    return truth


def cap_warnings(at_cap: list[str], detector) -> list[str]:
    if not at_cap:
        return []
    return [f"{len(at_cap)} field(s) reached the detector's cap of {detector.max_detections} boxes "
            f"({', '.join(at_cap[:3])}{', ...' if len(at_cap) > 3 else ''}): their counts may be cut short. Train "
            "the detector with a higher model.max_detections (a crowded field holds more cells)."]


def unreadable_message(folder: Path, unreadable: list) -> str:
    first = "; ".join(f"{path}: {reason}" for path, reason in unreadable[:3])
    return (f"none of the {len(unreadable)} image file(s) in {folder} could be read ({first}"
            f"{'; ...' if len(unreadable) > 3 else ''}): a count of nothing would read as zero cells. "
            "Check the files (are they images, fully copied?) and run again.")


def summarise(args, result, detector, routes, rule, classes, counts, warnings, device, n_files: int,
              seen: dict | None) -> dict:
    """summary.json: what ran on what, with which thresholds, and the total count per typed class."""
    total = counts[(counts["field"] == tables.ALL_FIELDS) & (counts["group"] == "typed")]
    return {
        "kind": "cascade", "fields_dir": str(args.images_dir), "n_fields": len(result.fields),
        "n_unreadable": len(result.unreadable), "n_cells": int(len(result.cells)),
        "n_typed": int(result.cells["classified"].sum()),
        "n_low_confidence": int((result.cells["low_confidence"] == True).sum()),  # noqa: E712 (None = not flagged)
        "detector": {"model": detector.model_name, "path": str(detector.path), "labels": detector.labels,
                     "input_size": detector.input_size, "score_thresholds": detector.score_thresholds,
                     "threshold_source": detector.threshold_source, "max_detections": detector.max_detections,
                     "source": str(args.detector), "backend": getattr(detector.model, "backend", "torch")},
        "fields_at_cap": result.fields_at_cap, "seen_fields": sorted(seen) if seen is not None else None,
        "classify_labels": list(routes), "classify_labels_rule": rule, "margin": args.margin,
        "crop_size": args.crop_size,
        "classifiers": {label: {"source": str(c.source), "models": [k.model_name for k in c.checkpoints],
                                "classes": c.class_names, "method": "majority" if c.voting == HARD else "soft",
                                "input_size": c.input_size, "backends": [k.backend for k in c.checkpoints],
                                "low_confidence_threshold": c.record.threshold,
                                "not_flagged_because": c.record.why}
                        for label, c in routes.items()},
        "classes": classes,
        "counts": {r.label: int(r.count) for r in total.itertuples()},
        "crop_upsampling_median": statistics.median(result.upsampling) if result.upsampling else None,
        "truth": str(args.truth) if args.truth else None, "truth_map": args.truth_map, "score_level": args.score_level,
        "warnings": warnings, "device": str(device), "seconds": result.seconds,
        "fields_per_s": n_files / result.seconds if result.seconds > 0 else float("nan"),
    }


def write_outputs(args, out: Path, result, skipped, detector, classes, truth, counts, summary, metrics) -> None:
    """OUT: cells.csv, counts.csv, unreadable.csv, fields/*.png, summary.json/.md, cascade_metrics.json."""
    (out / "fields").mkdir(parents=True, exist_ok=True)
    runs.write_csv_atomic(out / CELLS_CSV, result.cells)
    runs.write_csv_atomic(out / COUNTS_CSV, counts)
    runs.write_csv_atomic(out / "unreadable.csv", pd.DataFrame(result.unreadable + skipped, columns=["path", "reason"]))
    write_pictures(args.images_dir, out / "fields", result, detector.labels, classes, truth)
    runs.write_json_atomic(out / SUMMARY_JSON, summary)
    if metrics is not None:
        runs.write_text_atomic(out / METRICS_JSON, json.dumps(metrics, indent=2))
    runs.write_text_atomic(out / "summary.md", tables.summary_markdown(summary, counts, metrics))


def scale_warnings(upsampling) -> list[str]:
    if not upsampling:
        return []
    median = statistics.median(upsampling)
    if median <= UPSAMPLING_WARN:
        return []
    return [f"the cell crops are enlarged {median:.1f} times (median) to the classifier's input size: the cells in "
            "these fields have far fewer pixels than the images the classifier was trained on (a lower "
            "magnification, or a detector run at a smaller scale?); its types may be unreliable. Use fields at the "
            "classifier's magnification or a classifier trained at a smaller input size."]


def write_pictures(fields_dir: Path, out: Path, result, detector_labels, classes, truth=None) -> None:
    """fields/<field>.png for every readable field (the truth's missed cells in white when given)."""
    from bench.cascade.chain import read_field

    colours = draw.picture_colours(classes, detector_labels)
    legend = draw.legend_entries(colours, truth is not None, typed=classes)
    missed_by_field = missed_boxes(result, truth) if truth is not None else {}
    by_field = dict(tuple(result.cells.groupby("field", sort=False))) if len(result.cells) else {}
    for field in result.fields:
        image, _ = read_field(fields_dir / field)
        picture = draw.draw_field(image, by_field.get(field, result.cells.iloc[0:0]), colours,
                                  missed_by_field.get(field), legend)
        with runs.atomic_path(out / draw.picture_name(field)) as tmp:
            picture.save(tmp, format="PNG")


def missed_boxes(result, truth) -> dict[str, list]:
    keys = scoring.field_keys(truth, result.fields)
    by_field = dict(tuple(result.cells.groupby("field", sort=False))) if len(result.cells) else {}
    out = {}
    for field, k in keys.items():
        true = truth.images[k].boxes
        here = by_field.get(field, result.cells.iloc[0:0])
        pairs = scoring.match_boxes(here[["xmin", "ymin", "xmax", "ymax"]].to_numpy(float), true)
        matched = {j for _, j in pairs}
        out[field] = [true[j].tolist() for j in range(len(true)) if j not in matched]
    return out


def print_summary(result: dict, out: Path) -> None:
    s, counts, m = result["summary"], result["counts"], result["metrics"]
    print(f"{s['n_fields']} field(s): {s['n_cells']} cells found, {s['n_typed']} typed "
          f"({s['fields_per_s']:.2f} fields/s on {s['device']}); {s['n_unreadable']} unreadable")
    total = counts[counts["field"] == tables.ALL_FIELDS]
    for group in tables.GROUPS:
        print(f"\n{group}:")
        for row in total[total["group"] == group].itertuples(index=False):
            pct = "" if pd.isna(row.percent) else f"  {row.percent:6.2f}%"
            print(f"  {row.label:<20} {row.count:>6}{pct}")
    if m:
        print("\n" + "\n".join(tables.metrics_markdown(m)[:2]))
    for w in s["warnings"]:
        print(f"\nwarning: {w}")
    print(f"\nwrote cells.csv, counts.csv, unreadable.csv, fields/*.png, summary.json and summary.md"
          f"{' and cascade_metrics.json' if m else ''} in {out}"
          + (" (replaced the previous chain output of these fields there, whole)" if result.get("replaced") else ""))
