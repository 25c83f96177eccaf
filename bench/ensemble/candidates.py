"""An experiment's completed runs as ensemble candidates: their saved predictions, aligned by path.

Read on validation order (as on the leaderboard); runs whose classes or image sets differ are named.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from bench import runs

from bench.results import records as result_records

from bench.runs import files as run_files

log = logging.getLogger("bench.ensemble_runs")

SPLITS = ("val", "test")


class EnsembleError(ValueError):
    """Bad input for an ensemble (too few runs, mismatched predictions): the message says why."""


@dataclass
class SplitPredictions:
    paths: np.ndarray  # (N,) str, sorted
    labels: np.ndarray  # (N,) int
    probs: np.ndarray  # (M, N, C) float64, candidates in rank order


@dataclass
class Candidates:
    """Completed runs of an experiment with their saved predictions, in leaderboard order."""

    exp_dir: Path
    classes: list[str]
    ids: list[str]  # "model/seed<seed>"
    models: list[str]
    seeds: list[int | None]
    run_dirs: list[runs.RunDir]
    metrics: list[dict]
    splits: dict[str, SplitPredictions] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # completed runs left out, with the reason

    def __len__(self) -> int:
        return len(self.ids)


def classes_of(metrics: dict) -> list[str]:
    classes = metrics.get("classes") or list((metrics.get("val") or {}).get("per_class", {}))
    return [str(c) for c in classes]


def member_id(model: str, seed) -> str:
    return f"{model}/seed{seed}"


def _read_predictions(path: Path, classes: list[str], run_label: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        paths, labels, _, probs = run_files.read_predictions(path, classes)
    except run_files.PredictionsError as exc:
        raise EnsembleError(f"{exc} ({run_label})") from exc
    return paths, labels, probs


def load_candidates(exp_dir, splits: Sequence[str] = SPLITS) -> Candidates:
    """The completed runs of ``exp_dir`` with their predictions, aligned by path.

    Order: validation accuracy (from metrics.json, as on the leaderboard) descending,
    then model name, then seed. Completed runs without prediction files are skipped
    with a warning; runs whose classes or image sets differ raise :class:`EnsembleError`
    naming both runs.
    """
    exp_dir = Path(exp_dir)
    found, skipped = _usable_runs(exp_dir, splits)
    cands = Candidates(exp_dir, [], [], [], [], [], [], skipped=skipped)
    if not found:
        return cands
    ref_record = found[0][0]
    classes = classes_of(ref_record.metrics)
    cands.classes = classes
    per_split: dict[str, list] = {s: [] for s in splits}
    ref_split: dict[str, tuple] = {}
    for record, run_dir in found:
        rid = member_id(record.model, record.seed)
        if classes_of(record.metrics) != classes:
            raise EnsembleError(
                f"runs {member_id(ref_record.model, ref_record.seed)} and {rid} have different classes "
                f"({classes} vs {classes_of(record.metrics)}); members of one ensemble must share the "
                f"class order. Ensemble runs of one experiment only.")
        for split in splits:
            paths, labels, probs = _read_predictions(run_dir.predictions(split), classes, rid)
            if split not in ref_split:
                ref_split[split] = (paths, labels, member_id(ref_record.model, ref_record.seed))
            else:
                _check_aligned(ref_split[split], (paths, labels, rid), split)
            per_split[split].append(probs)
        cands.ids.append(rid)
        cands.models.append(record.model)
        cands.seeds.append(record.seed)
        cands.run_dirs.append(run_dir)
        cands.metrics.append(record.metrics)
    for split in splits:
        paths, labels, _ = ref_split[split]
        cands.splits[split] = SplitPredictions(paths, labels, np.stack(per_split[split]))
    return cands


def _usable_runs(exp_dir: Path, splits: Sequence[str]) -> tuple[list[tuple], list[str]]:
    """(record, run folder) of each completed run with its prediction files and the experiment's main
    class set, best validation accuracy first; and why each other completed run was skipped."""
    found, skipped = [], []
    for run_dir in runs.iter_run_dirs(exp_dir):
        record = result_records.read_run(run_dir)
        if record is None or not record.completed:
            continue
        missing = [s for s in splits if not run_dir.predictions(s).exists()]
        if missing:
            skipped.append(f"{member_id(record.model, record.seed)}: no predictions_{missing[0]}.csv")
            log.warning("skipping %s: %s", run_dir.root, skipped[-1])
            continue
        found.append((record, run_dir))
    # Runs trained on another class set than most (a subset, a grouping) cannot vote with them.
    main = result_records.main_class_set([record for record, _ in found])
    kept = []
    for record, run_dir in found:
        why = result_records.off_main_classes(record, main)
        if why:
            skipped.append(f"{member_id(record.model, record.seed)}: {why}")
            log.warning("skipping %s: %s", run_dir.root, why)
        else:
            kept.append((record, run_dir))

    def order(item):
        record = item[0]
        val_acc = float((record.metrics.get("val") or {}).get("accuracy", math.nan))
        return (-val_acc if val_acc == val_acc else math.inf, record.model,
                record.seed if isinstance(record.seed, int) else math.inf)

    return sorted(kept, key=order), skipped


def _check_aligned(ref: tuple, other: tuple, split: str) -> None:
    ref_paths, ref_labels, ref_id = ref
    paths, labels, rid = other
    if len(paths) == len(ref_paths) and (paths == ref_paths).all():
        if (labels == ref_labels).all():
            return
        i = int(np.flatnonzero(labels != ref_labels)[0])
        raise EnsembleError(
            f"runs {ref_id} and {rid} disagree on the label of {paths[i]!r} in predictions_{split}.csv; "
            "their predictions come from different splits or data and cannot be ensembled.")
    only_ref = sorted(set(ref_paths) - set(paths))[:3]
    only_other = sorted(set(paths) - set(ref_paths))[:3]
    raise EnsembleError(
        f"runs {ref_id} and {rid} have different {split} images in predictions_{split}.csv "
        f"({len(ref_paths)} vs {len(paths)} rows; only in {ref_id}: {only_ref}, only in {rid}: {only_other}). "
        "Members must be evaluated on the same split (same manifest, no trainer.max_batches); "
        "re-run or remove the odd run.")
