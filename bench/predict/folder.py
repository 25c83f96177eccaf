"""``bench-predict``: classify a folder of new cell images with one checkpoint or an ensemble.

::

    bench-predict IMAGES_DIR --checkpoint A.pt [--checkpoint B.pt ...] --out DIR
    bench-predict IMAGES_DIR --ensemble results/<exp>/ensembles/<name> --out DIR
    bench-predict FIELDS_DIR --detector DET_RUN --classifier CLS --out DIR    (smear fields: bench.cascade)

Every image file under IMAGES_DIR (recursively; hidden files skipped) goes through the
training's eval transform: decoded to RGB, resized to the checkpoint's input size the way the
run did it (the whole image, or shorter side then centre crop: ``decode_resized`` with the
checkpoint's geometry), normalised with the checkpoint's mean/std. Class
names come from the checkpoint, so the class order cannot be mixed up; several
checkpoints must have exactly the same class names. Checkpoints are loaded with
``torch.load(..., weights_only=True)``.

The models are read by :mod:`bench.predict.checkpoints`, the images by :mod:`bench.predict.images`
and the tables written by :mod:`bench.predict.tables`; this module is the command.

Several checkpoints are combined with :func:`bench.ensemble.voting.combine`, i.e. the tie
rules of :mod:`bench.ensemble.voting`; member rank order is the order given (``--ensemble``:
the order of its members.csv, i.e. validation rank), weights from members.csv.

``--method``: ``majority`` (hard vote; confidence = vote share of the predicted class)
or ``soft`` (mean probability; confidence = mean probability of the predicted class).
Default: the ensemble's own voting with ``--ensemble``, else ``soft`` for one
checkpoint and ``majority`` for several.

Writes into ``--out``::

    predictions.csv   path, predicted, confidence, low_confidence, votes_<class> (majority), prob_<class> (mean)
    counts.csv        class, count, percent, n_low_confidence, val_recall: the differential count of the
                      readable images, how many of each class the model was unsure of, and how often it
                      finds that class on its own validation data
    unreadable.csv    path, reason: files that could not be decoded (never fatal)
    summary.json      checkpoints, method, classes, counts, the low-confidence threshold and its source

``low_confidence``: the confidence is below the threshold chosen on the model's validation data
(the 5 % quantile of its confidence on the validation images it got right; the run's or the
ensemble's ``metrics.json``). Several loose checkpoints were never validated together, so their
images are not flagged (the summary says why). An empty folder, or one whose images all fail to
decode, is an error, not a zero count.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from bench import runs
from bench.data.imagefolder import IMAGE_EXTENSIONS
from bench.ensemble.voting import HARD, SOFT
from bench.predict.checkpoints import PredictError, check_same_classes, ensemble_checkpoints, load_checkpoint
from bench.predict.images import list_images, predict_probs
from bench.predict.tables import prediction_tables, validation_record

log = logging.getLogger(__name__)

METHODS = {"majority": HARD, "soft": SOFT}


def prediction_device(name: str) -> torch.device:
    """The device for predicting (``auto``, ``cpu``, ``cuda``...), or a PredictError naming why not."""
    from bench.training.device import resolve_device

    try:
        return resolve_device(name)
    except (RuntimeError, ValueError) as exc:
        raise PredictError(str(exc)) from exc


def run(args: argparse.Namespace) -> dict:
    if not args.images_dir.is_dir():
        raise PredictError(f"{args.images_dir} is not a folder. Pass a folder holding the images to classify "
                           f"(any of {', '.join(IMAGE_EXTENSIONS)}, searched recursively).")
    if args.batch_size < 1:
        raise PredictError(f"--batch-size must be at least 1, got {args.batch_size}.")
    paths, weights, voting = _models_and_voting(args)
    files, skipped = list_images(args.images_dir)
    if not files:
        raise PredictError(f"{args.images_dir} holds no image files ({', '.join(IMAGE_EXTENSIONS)}; searched "
                           f"recursively{f', {len(skipped)} other file(s) skipped' if skipped else ''}); a "
                           "differential count of nothing would read as zero cells. Pass the folder of the images.")
    device = prediction_device(args.device)
    checkpoints = [load_checkpoint(p, device, getattr(args, "backend", None)) for p in paths]
    class_names = check_same_classes(checkpoints)
    # An export folder stands for its source run (model.json's source): its validation record and temperature.
    paths = [c.path for c in checkpoints]

    start = time.perf_counter()
    probs, readable, reasons = predict_probs(checkpoints, files, batch_size=args.batch_size, device=device)
    seconds = time.perf_counter() - start
    temperatures = calibrate(probs, paths) if getattr(args, "calibrated", False) else None
    rel = [f.relative_to(args.images_dir).as_posix() for f in files]
    if not readable.any():
        raise PredictError(_nothing_readable(args.images_dir, rel, reasons, skipped))
    ok_paths = [p for p, ok in zip(rel, readable) if ok]
    record = validation_record(paths[:len(args.checkpoint)], args.ensemble, voting, class_names)
    if temperatures is not None:  # the validation threshold was chosen on raw probabilities: it does not transfer
        record.threshold, record.why = None, ("--calibrated: the low-confidence threshold was chosen on the raw "
                                              "validation probabilities and does not apply to calibrated ones")
    preds, counts = prediction_tables(ok_paths, probs, class_names, voting, weights, record)
    unreadable = pd.DataFrame(
        [(p, r) for p, r in zip(rel, reasons) if r is not None] + skipped, columns=["path", "reason"]
    ).sort_values("path", kind="mergesort")
    summary = {
        "images_dir": str(args.images_dir), "checkpoints": [str(p) for p in paths],
        "models": [c.model_name for c in checkpoints], "weights": weights,
        "method": "majority" if voting == HARD else "soft", "classes": class_names,
        "n_images": len(files), "n_classified": len(ok_paths), "n_unreadable": len(unreadable),
        "counts": dict(zip(counts["class"], counts["count"].astype(int).tolist())),
        "low_confidence": {"threshold": record.threshold, "rule": record.rule, "source": record.source,
                           "n": int(preds["low_confidence"].fillna(False).astype(bool).sum())
                           if record.threshold is not None else None,
                           "not_flagged_because": record.why},
        "val_recall": record.recall,
        "probabilities": "raw" if temperatures is None else
        f"calibrated: each model's temperature fitted on its validation images ({', '.join(f'{t:.3f}' for t in temperatures)})",
        "device": str(device), "backends": [c.backend for c in checkpoints], "seconds": seconds,
    }
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    runs.write_csv_atomic(out / "predictions.csv", preds)
    runs.write_csv_atomic(out / "counts.csv", counts)
    runs.write_csv_atomic(out / "unreadable.csv", unreadable)
    runs.write_json_atomic(out / "summary.json", summary)
    return {"summary": summary, "counts": counts, "unreadable": unreadable, "predictions": preds}


def calibrate(probs, paths) -> list[float]:
    """Each model's probabilities (``probs[m]``, in place) softened or sharpened by the temperature its run
    fitted on its validation images; the temperatures. PredictError for a run that has none."""
    from bench.metrics.calibration import apply_temperature
    from bench.results.confidence import validation_choices

    temperatures = []
    for m, path in enumerate(paths):
        chosen = validation_choices(Path(path).parent)
        if chosen is None:
            raise PredictError(f"--calibrated: {Path(path).parent} has no temperature and no validation predictions "
                               "to fit one on; leave --calibrated out for this model.")
        probs[m] = apply_temperature(probs[m], chosen[0])
        temperatures.append(float(chosen[0]))
    return temperatures


def _models_and_voting(args) -> tuple[list[Path], list[float], str]:
    """The checkpoints (-c, then an ensemble's members), their weights, and the voting: --method, else
    the ensemble's own, else soft for one model and majority for several."""
    paths, weights = list(args.checkpoint), [1.0] * len(args.checkpoint)
    ens_voting = None
    if args.ensemble is not None:
        ens_paths, ens_weights, ens_voting = ensemble_checkpoints(args.ensemble)
        paths += ens_paths
        weights += ens_weights
    if not paths:
        raise PredictError("no model given: pass --checkpoint PATH/best.pt (repeatable) or --ensemble "
                           "results/<exp>/ensembles/<name>.")
    if args.method is not None:
        voting = METHODS[args.method]
    elif ens_voting in (HARD, SOFT) and not args.checkpoint:
        voting = ens_voting
    else:
        voting = SOFT if len(paths) == 1 else HARD
    return paths, weights, voting


def _nothing_readable(images_dir: Path, rel: Sequence[str], reasons: Sequence[str | None],
                      skipped: Sequence[tuple[str, str]], shown: int = 10) -> str:
    """The error for a folder none of whose image files decodes: like an empty folder, a count of
    nothing would read as zero cells. Names each file with its reason (the first ``shown``)."""
    failed = [f"{p} ({r})" for p, r in zip(rel, reasons) if r is not None]
    more = f", and {len(failed) - shown} more" if len(failed) > shown else ""
    other = f"; {len(skipped)} other file(s) skipped" if skipped else ""
    return (f"{images_dir}: none of its {len(failed)} image file(s) could be decoded{other}, so there is nothing to "
            f"count (a differential count of nothing would read as zero cells). Unreadable: "
            f"{'; '.join(failed[:shown])}{more}. Replace or re-export the files (a truncated copy, another format "
            "under an image extension), or pass the folder that holds the images.")
