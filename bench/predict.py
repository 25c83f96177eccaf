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

Several checkpoints are combined with :func:`bench.ensemble.combine`, i.e. the tie
rules of :mod:`bench.ensemble`; member rank order is the order given (``--ensemble``:
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
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from bench import runs
from bench import run_files
from bench.data.imagefolder import IMAGE_EXTENSIONS, try_decode
from bench.data.transforms import Normalize
from bench.ensemble import HARD, SOFT, combine, confidence_of
from bench.ensemble_runs import MEMBERS_CSV

log = logging.getLogger(__name__)

METHODS = {"majority": HARD, "soft": SOFT}
REQUIRED_KEYS = ("model", "model_name", "class_names", "input_size", "mean", "std")


class PredictError(ValueError):
    """Bad input for bench-predict: the message says what and how to fix it."""


@dataclass
class LoadedCheckpoint:
    path: Path
    model_name: str
    class_names: list[str]
    input_size: int
    mean: list[float]
    std: list[float]
    model: torch.nn.Module
    weight: float = 1.0
    geometry: tuple = ("resize",)  # how the run decoded its images (data.geometry, crop_fraction)

    @property
    def decoding(self) -> tuple:
        """What decoding an image for this checkpoint takes: (size, *geometry)."""
        return (self.input_size, *self.geometry)


# --------------------------------------------------------------------------- checkpoints
def load_checkpoint(path, device: torch.device | str = "cpu") -> LoadedCheckpoint:
    """Rebuild the network of a ``best.pt`` (weights_only load) in eval mode on ``device``."""
    from bench.checkpoints import rebuild_model

    path = Path(path)
    if not path.is_file():
        raise PredictError(f"checkpoint {path} does not exist. Pass a best.pt written by bench-train "
                           "(results/<experiment>/runs/<model>/seed<seed>/best.pt).")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, non-checkpoint files
        raise PredictError(f"could not load checkpoint {path} ({type(exc).__name__}: {exc}). It must be a "
                           "best.pt written by bench-train, loadable with weights_only=True.") from exc
    missing = [k for k in REQUIRED_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise PredictError(f"{path} lacks {missing}; it is not a bench-train best.pt (last.pt holds no class "
                           "names: use best.pt).")
    name = str(ckpt["model_name"])
    class_names = [str(c) for c in ckpt["class_names"]]
    try:
        model = rebuild_model(ckpt)
    except Exception as exc:
        raise PredictError(f"could not rebuild {name} from {path} ({type(exc).__name__}: {exc}).") from exc
    model.eval().to(device)
    return LoadedCheckpoint(path, name, class_names, int(ckpt["input_size"]), [float(v) for v in ckpt["mean"]],
                            [float(v) for v in ckpt["std"]], model,
                            geometry=tuple(ckpt.get("geometry") or ("resize",)))


def ensemble_checkpoints(ens_dir) -> tuple[list[Path], list[float], str | None]:
    """Checkpoints (rank order), weights and voting of an ensemble folder written by bench-ensemble."""
    ens_dir = Path(ens_dir)
    members_csv = ens_dir / MEMBERS_CSV
    if not members_csv.is_file():
        raise PredictError(f"{ens_dir} has no {MEMBERS_CSV}; pass a folder written by bench-ensemble "
                           "(results/<experiment>/ensembles/<name>).")
    members = pd.read_csv(members_csv)
    if "checkpoint" not in members.columns or not len(members):
        raise PredictError(f"{members_csv} lists no member checkpoints (no 'checkpoint' column or no rows).")
    exp_dir = ens_dir.parent.parent  # <exp>/ensembles/<name>
    paths = [p if p.is_absolute() else exp_dir / p for p in map(Path, members["checkpoint"].astype(str))]
    # Greedy ensembles record how often a member was picked; others a (normalised) weight.
    column = "count" if "count" in members.columns else "weight" if "weight" in members.columns else None
    weights = members[column].astype(float).tolist() if column else [1.0] * len(paths)
    if len(set(weights)) == 1:
        weights = [1.0] * len(paths)  # equal weights: plain votes (integral vote counts)
    voting = None
    try:
        voting = run_files.read_metrics(ens_dir, "ensemble").get("voting")
    except (OSError, ValueError):
        pass
    return paths, weights, voting


def check_same_classes(checkpoints: Sequence[LoadedCheckpoint]) -> list[str]:
    first = checkpoints[0]
    for other in checkpoints[1:]:
        if other.class_names != first.class_names:
            raise PredictError(
                f"checkpoints {first.path} and {other.path} have different class names: "
                f"{first.class_names} vs {other.class_names}. Members of one ensemble must be trained on the "
                "same classes in the same order; use checkpoints of one experiment.")
    return first.class_names


# --------------------------------------------------------------------------- images
def list_images(root) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files under ``root`` (sorted) and (path, reason) for other non-hidden files."""
    root = Path(root)
    images, skipped = [], []
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not f.is_file():
            continue
        if f.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(f)
        else:
            skipped.append((rel.as_posix(), f"not an image file (extension not one of {', '.join(IMAGE_EXTENSIONS)})"))
    return images, skipped


def _to_batch(arrays: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 HWC arrays -> uint8 tensor (N, 3, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2)))


@torch.inference_mode()
def predict_probs(checkpoints: Sequence[LoadedCheckpoint], files: Sequence[Path], *, batch_size: int = 64,
                  device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """Probabilities (checkpoints, readable images, classes), the readable mask and reasons.

    Images are decoded once per distinct input size and geometry, a batch at a time.
    """
    device = torch.device(device)
    sizes = sorted({c.decoding for c in checkpoints}, key=str)
    norms = [Normalize(c.mean, c.std, device=device) for c in checkpoints]
    n_cls = len(checkpoints[0].class_names)
    reasons: list[str | None] = [None] * len(files)
    out = []
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        decoded: dict[tuple, list] = {}
        for size in sizes:
            decoded[size] = [try_decode((str(f), *size)) for f in chunk]
        ok = []
        for i in range(len(chunk)):
            failed = [decoded[s][i][1] for s in sizes if decoded[s][i][0] is None]
            if failed:
                reasons[start + i] = failed[0]
            else:
                ok.append(i)
        if not ok:
            continue
        out.append(member_probs(checkpoints, {s: [decoded[s][i][0] for i in ok] for s in sizes}, norms, device))
    readable = np.array([r is None for r in reasons], dtype=bool)
    probs = np.concatenate(out, axis=1) if out else np.zeros((len(checkpoints), 0, n_cls))
    return probs, readable, reasons


@torch.inference_mode()
def member_probs(checkpoints: Sequence[LoadedCheckpoint], arrays: dict[tuple, list[np.ndarray]],
                 norms: Sequence[Normalize], device) -> np.ndarray:
    """Softmax probabilities (checkpoints, images, classes) of one batch of decoded images;
    ``arrays[c.decoding]`` holds the batch as checkpoint ``c`` decodes it (uint8 HWC)."""
    n = len(next(iter(arrays.values())))
    probs = np.zeros((len(checkpoints), n, len(checkpoints[0].class_names)))
    batches = {s: _to_batch(a).to(device) for s, a in arrays.items()}
    for m, (ckpt, norm) in enumerate(zip(checkpoints, norms)):
        out_m = ckpt.model(norm(batches[ckpt.decoding]))
        logits = out_m if isinstance(out_m, torch.Tensor) else tuple(out_m)[0]
        probs[m] = torch.softmax(logits.float(), dim=1).cpu().numpy()
    return probs


# --------------------------------------------------------------------------- tables
@dataclass
class ValidationRecord:
    """What the model(s) did on their validation data, for reading new predictions honestly:
    the low-confidence threshold chosen there and the recall of each class. Empty (with
    ``why``) when no record applies to this combination of checkpoints and voting."""

    threshold: float | None = None
    rule: str | None = None
    recall: dict[str, float] | None = None
    source: str | None = None
    why: str | None = None


def validation_record(checkpoints: Sequence[Path], ensemble_dir: Path | None, voting: str,
                      class_names: Sequence[str]) -> ValidationRecord:
    """The record of one checkpoint (its run's metrics.json) or of one ensemble (its metrics.json)."""
    if ensemble_dir is not None and not checkpoints:
        source, kind = Path(ensemble_dir) / "metrics.json", "vote_share" if voting == HARD else "probability"
    elif ensemble_dir is None and len(checkpoints) == 1:
        source, kind = Path(checkpoints[0]).parent / "metrics.json", "probability"
        if voting == HARD:
            return ValidationRecord(why="one checkpoint by majority vote: its vote share is always 1")
    else:
        return ValidationRecord(why="these checkpoints were never validated together (no ensemble folder)")
    try:
        metrics = run_files.read_metrics(source, "ensemble" if ensemble_dir is not None and not checkpoints else "run")
    except (OSError, ValueError):
        return ValidationRecord(why=f"no readable {source} beside the model")
    if [str(c) for c in metrics.get("classes") or []] != list(class_names):
        return ValidationRecord(why=f"{source} is for other classes")
    per_class = (metrics.get("val") or {}).get("per_class") or {}
    recall = {c: float(per_class[c]["sensitivity"]) for c in class_names if c in per_class}
    found = metrics.get("confidence_threshold") or {}
    if found.get("kind", "probability") != kind or "value" not in found:
        return ValidationRecord(recall=recall or None, source=str(source),
                                why=f"{source} has no {kind} threshold (written by an older bench, or another voting)")
    return ValidationRecord(float(found["value"]), found.get("rule"), recall or None, str(source))


def prediction_tables(paths: Sequence[str], probs: np.ndarray, class_names: Sequence[str], voting: str,
                      weights: Sequence[float] | None = None,
                      record: ValidationRecord | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """predictions.csv and counts.csv frames from member probabilities (M, N, C)."""
    record = record or ValidationRecord()
    n = probs.shape[1]
    if n:
        comb = combine(probs, weights, voting)
        pred, votes, proba = comb.pred, comb.votes, comb.proba
        confidence = confidence_of(comb, voting)
    else:
        pred, votes, proba = np.zeros(0, int), np.zeros((0, len(class_names))), np.zeros((0, len(class_names)))
        confidence = np.zeros(0)
    low = confidence < record.threshold if record.threshold is not None else None
    frame = pd.DataFrame({"path": list(paths), "predicted": [class_names[i] for i in pred],
                          "confidence": np.round(confidence, 6),
                          "low_confidence": low if low is not None else pd.Series([None] * n, dtype=object)})
    if voting == HARD:
        integral = np.allclose(votes, np.round(votes))
        for j, c in enumerate(class_names):
            frame[f"votes_{c}"] = np.round(votes[:, j]).astype(int) if integral else votes[:, j].round(6)
    for j, c in enumerate(class_names):
        frame[f"prob_{c}"] = proba[:, j].round(6)
    counts = np.bincount(pred, minlength=len(class_names))
    percent = counts / n * 100 if n else np.zeros(len(class_names))
    count_frame = pd.DataFrame({"class": list(class_names), "count": counts, "percent": np.round(percent, 2)})
    # Beside each count: how many of those images the model was unsure of, and how often it finds
    # that class on its validation data (a class it finds half the time is undercounted here too).
    count_frame["n_low_confidence"] = (np.bincount(pred[low], minlength=len(class_names)) if low is not None
                                       else pd.array([pd.NA] * len(class_names), dtype="Int64"))
    count_frame["val_recall"] = [round(record.recall[c], 4) if record.recall and c in record.recall else np.nan
                                 for c in class_names]
    return frame, count_frame


# --------------------------------------------------------------------------- CLI
def _device(name: str) -> torch.device:
    from bench.device import resolve_device

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
    device = _device(args.device)
    checkpoints = [load_checkpoint(p, device) for p in paths]
    class_names = check_same_classes(checkpoints)

    start = time.perf_counter()
    probs, readable, reasons = predict_probs(checkpoints, files, batch_size=args.batch_size, device=device)
    seconds = time.perf_counter() - start
    rel = [f.relative_to(args.images_dir).as_posix() for f in files]
    if not readable.any():
        raise PredictError(_nothing_readable(args.images_dir, rel, reasons, skipped))
    ok_paths = [p for p, ok in zip(rel, readable) if ok]
    record = validation_record(list(args.checkpoint), args.ensemble, voting, class_names)
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
        "device": str(device), "seconds": seconds,
    }
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    runs.write_csv_atomic(out / "predictions.csv", preds)
    runs.write_csv_atomic(out / "counts.csv", counts)
    runs.write_csv_atomic(out / "unreadable.csv", unreadable)
    runs.write_json_atomic(out / "summary.json", summary)
    return {"summary": summary, "counts": counts, "unreadable": unreadable, "predictions": preds}


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


def main(argv: Sequence[str] | None = None) -> int:
    from bench.commands import parser

    args = parser("bench-predict").parse_args(argv)
    if args.detector is not None or args.classifier:
        from bench.cascade import cli as cascade

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
          f"({s['method']}, {s['device']}, {s['seconds']:.1f} s); {s['n_unreadable']} unreadable")
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
