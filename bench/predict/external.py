"""``bench-evaluate``: does a trained model hold on another lab's images? An external test set.

::

    bench-evaluate results/<exp>/runs/resnet18/seed0 /data/lab2 --map Neutrophil=neutrophil,Lympho=lymphocyte
    bench-evaluate results/<exp>/ensembles/majority-k4 /data/lab2 --name lab2

The external folder has one sub-folder per class (its own names); ``--map FOLDER=CLASS,...``
says which of the model's classes each folder is (names that match a model class, ignoring
case, need no mapping). Folders that map to no class the model knows are reported and left out:
the model cannot be right about them, and counting them wrong would say nothing about it.
Nothing is trained or selected here: the saved ``best.pt`` (or the ensemble's members and
voting) classify every image once, through the training's eval transform.

Writes ``<run or ensemble>/external/<name>/`` (name: ``--name``, default the folder's name)::

    metrics.json       the metric set of bench.metrics on the mapped classes, plus the mapping and
                       the folders left out
    predictions.csv    path, label, predicted, prob_<class> per image
    unreadable.csv     files that could not be decoded

and the experiment's leaderboard gets ``ext_<name>_acc`` and ``ext_<name>_balanced_acc``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from bench.results import leaderboard as lb
from bench.results import records as result_records
from bench import runs
from bench.runs import files as run_files
from bench.ensemble.voting import HARD, combine
from bench.ensemble.folders import MEMBERS_CSV
from bench.metrics import classification_metrics
from bench.predict.checkpoints import PredictError, check_same_classes, ensemble_checkpoints, load_checkpoint
from bench.predict.images import predict_probs


class EvaluateError(PredictError):
    """Bad input for bench-evaluate: the message says what and how to fix it."""


def resolve_source(source) -> tuple[list[Path], list[float], str, Path, Path]:
    """(checkpoints, weights, voting, folder to write under, experiment folder) of a run folder,
    a best.pt or an ensemble folder."""
    source = Path(source)
    if source.is_dir() and (source / MEMBERS_CSV).is_file():
        paths, weights, voting = ensemble_checkpoints(source)
        return paths, weights, voting or HARD, source, source.parent.parent
    if source.is_dir():
        source = source / "best.pt"
    if not source.is_file():
        raise EvaluateError(f"{source} is neither a run folder with best.pt, a best.pt, nor an ensemble folder "
                            "(results/<exp>/runs/<model>/seed<seed> or results/<exp>/ensembles/<name>).")
    run_dir = source.parent
    return [source], [1.0], "soft", run_dir, run_dir.parents[2]


def parse_map(text: str | None) -> dict[str, str]:
    """``A=a,B=b`` -> {"A": "a", "B": "b"} (external folder name -> model class)."""
    mapping = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        folder, sep, cls = part.partition("=")
        if not sep or not folder.strip() or not cls.strip():
            raise EvaluateError(f"--map entry {part!r} is not FOLDER=CLASS (e.g. --map Neutrophil=neutrophil,"
                                "Lympho=lymphocyte).")
        mapping[folder.strip()] = cls.strip()
    return mapping


def map_folders(folders: Sequence[str], classes: Sequence[str], mapping: dict[str, str]) -> tuple[dict, list]:
    """External folder -> model class (explicit ``--map``, else the same name ignoring case); and
    the folders that map to nothing the model knows."""
    lower = {c.lower(): c for c in classes}
    bad = {f: c for f, c in mapping.items() if c not in classes}
    if bad:
        raise EvaluateError(f"--map sends {bad} to class(es) the model does not have; its classes are "
                            f"{', '.join(classes)}.")
    missing = [f for f in mapping if f not in folders]
    if missing:
        raise EvaluateError(f"--map names folder(s) {missing} that {', '.join(folders)} do not include.")
    out, unknown = {}, []
    for folder in folders:
        target = mapping.get(folder) or lower.get(folder.lower())
        if target is None:
            unknown.append(folder)
        else:
            out[folder] = target
    return out, unknown


def evaluate_external(source, data_root, *, mapping: dict[str, str] | None = None, name: str | None = None,
                      batch_size: int = 64, device="cpu", refresh: bool = True, skip_same: bool = False) -> dict:
    """Evaluate a run or ensemble on an external image folder; write its folder; return metrics.json.
    ``skip_same``: a folder already evaluated on the same files with the same checkpoints is not
    evaluated again (its metrics come back with ``skipped``); ``refresh``: rebuild the leaderboard."""
    from bench.data.imagefolder import DataError, scan_imagefolder

    paths, weights, voting, owner, exp_dir = resolve_source(source)
    try:
        records, folders = scan_imagefolder(data_root)
    except DataError as exc:
        raise EvaluateError(str(exc)) from exc
    checkpoints = [load_checkpoint(p, device) for p in paths]
    classes = check_same_classes(checkpoints)
    to_class, unknown = map_folders(folders, classes, mapping or {})
    if not to_class:
        raise EvaluateError(f"none of the folders of {data_root} ({', '.join(folders)}) is one of the model's "
                            f"classes ({', '.join(classes)}); say which is which with --map FOLDER=CLASS,...")
    kept = [r for r in records if r.label in to_class]
    name = name or re.sub(r"[^\w.-]+", "_", Path(data_root).resolve().name) or "external"
    out = owner / result_records.EXTERNAL_DIR / name
    fingerprint = files_fingerprint(data_root, kept, to_class)
    done = _done_before(out, fingerprint, paths) if skip_same else None
    if done is not None:
        return {**done, "skipped": True}
    start = time.perf_counter()
    probs, readable, reasons = predict_probs(checkpoints, [Path(data_root) / r.path for r in kept],
                                             batch_size=batch_size, device=device)
    seconds = time.perf_counter() - start
    ok = [r for r, good in zip(kept, readable) if good]
    index = {c: i for i, c in enumerate(classes)}
    y_true = np.array([index[to_class[r.label]] for r in ok], dtype=int)
    if not len(ok):
        raise EvaluateError(f"no image of {data_root} could be decoded; see the reasons in the output folder.")
    combined = combine(probs, weights, voting)
    metrics = classification_metrics(y_true, combined.pred, classes)
    metrics.update({
        "name": name, "data_root": str(data_root), "source": str(source), "checkpoints": [str(p) for p in paths],
        "voting": voting, "mapping": to_class, "left_out_folders": unknown,
        # The model's classes the set has no image of: undefined there (None), never scored as zero.
        "classes_absent": [c for c in classes if c not in set(to_class.values())],
        "n_left_out": len(records) - len(kept), "n_unreadable": int((~readable).sum()), "seconds": seconds,
        "files": fingerprint,
        # Temperature and referral threshold as chosen on the run's own validation images.
        "calibration": external_confidence(owner, combined.proba, y_true, voting),
    })
    frame = pd.DataFrame({"path": [r.path for r in ok], "label": [classes[i] for i in y_true],
                          "predicted": [classes[i] for i in combined.pred]})
    for j, c in enumerate(classes):
        frame[f"prob_{c}"] = combined.proba[:, j]
    runs.write_csv_atomic(out / "predictions.csv", frame)
    runs.write_csv_atomic(out / "unreadable.csv", pd.DataFrame(
        [(r.path, why) for r, why in zip(kept, reasons) if why is not None], columns=["path", "reason"]))
    run_files.write_metrics(out, metrics, kind="external")  # last: its presence means complete
    if refresh:
        lb.refresh_leaderboard(exp_dir)
    return metrics


def _done_before(out: Path, fingerprint: str, checkpoints) -> dict | None:
    """The metrics of an earlier evaluation of the same files with the same checkpoints, else None."""
    path = out / run_files.METRICS_JSON
    if not path.is_file():
        return None
    try:
        metrics = run_files.read_metrics(path, kind="external")
    except (OSError, run_files.UnreadableMetrics):
        return None
    same = metrics.get("files") == fingerprint and metrics.get("checkpoints") == [str(p) for p in checkpoints]
    return metrics if same else None


def files_fingerprint(data_root, records, to_class: dict) -> str:
    """What an evaluation read: the mapped files (relative path, size, modification time) and the
    mapping, hashed; the same fingerprint means the same external set, evaluated already."""
    import hashlib

    h = hashlib.sha1(repr(sorted(to_class.items())).encode())
    for r in sorted(records, key=lambda r: r.path):
        st = (Path(data_root) / r.path).stat()
        h.update(f"{r.path}|{r.label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def external_confidence(owner: Path, probs, labels, voting: str) -> dict | None:
    """Calibration and referral on the external images with the temperature and the threshold the
    run (or soft-vote ensemble) chose on its validation images; None for a hard vote (a share of votes
    is no probability) or a run whose validation predictions cannot be read."""
    from bench.metrics.calibration import split_confidence
    from bench.results.confidence import validation_choices

    if voting == HARD:
        return None
    chosen = validation_choices(owner)
    if chosen is None:
        return None
    temperature, threshold, target = chosen
    return {"temperature": temperature, "referral_threshold": threshold, "target_acc": target,
            **split_confidence(probs, labels, temperature, threshold)}
