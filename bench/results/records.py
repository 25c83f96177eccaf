"""What the tables read from an experiment's folders: one record per run, the ensembles.

Reading tolerates a run caught mid-way (:mod:`bench.results.leaderboard` says how): a ``completed``
status whose ``metrics.json`` is not there (yet) counts as running, an unreadable
``status.json`` is skipped with a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from bench import runs

from bench.runs import files as run_files

log = logging.getLogger("bench.leaderboard")

STATUS_UNREADABLE = "unreadable"  # completed, but its metrics.json cannot be read
KIND_MODEL = "model"
KIND_ENSEMBLE = "ensemble"
KIND_DETECTOR = "detector"  # a detection run: mAP where classifiers have accuracy

ENSEMBLES_DIR = "ensembles"  # <exp>/ensembles/<name>/metrics.json, written by bench-ensemble
EXTERNAL_DIR = "external"  # <run or ensemble>/external/<name>/metrics.json, written by bench-evaluate


@dataclass
class RunRecord:
    """What the leaderboard needs from one run folder."""

    model: str
    seed: int | None
    status: str
    error: str | None = None
    metrics: dict = field(default_factory=dict)  # empty unless completed
    root: Path | None = None  # the run folder
    @property
    def completed(self) -> bool:
        return self.status == runs.STATUS_COMPLETED


def _model_seed_from_path(run_dir: runs.RunDir) -> tuple[str, int | None]:
    # The folder name is the fallback identity: model_dirname() turned "/" into "--".
    model = run_dir.root.parent.name.replace("--", "/")
    seed_text = run_dir.root.name.removeprefix("seed")
    return model, int(seed_text) if seed_text.lstrip("-").isdigit() else None


def _read_json_or_none(path: Path, what: str) -> Any | None:
    """A JSON file, or None with a warning if it cannot be read or parsed."""
    try:
        return runs.read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # ValueError covers JSON and Unicode decode errors
        log.warning("skipping unreadable %s %s: %s", what, path, exc)
        return None


def metrics_or_none(path: Path, kind: str) -> dict | None:
    """An ensemble's or external evaluation's metrics.json, or None with a warning naming it."""
    try:
        return run_files.read_metrics(path, kind)
    except FileNotFoundError:
        return None
    except (OSError, run_files.UnreadableMetrics) as exc:
        log.warning("skipping the %s at %s: %s", kind, path.parent, exc)
        return None


def read_run(run_dir: runs.RunDir) -> RunRecord | None:
    """One run folder as a record; None if its status file cannot be read."""
    status = _read_json_or_none(run_dir.status, "status file")
    if status is None:  # unreadable (already warned) or removed since the folder scan
        return None
    if not isinstance(status, dict) or "status" not in status:
        log.warning("skipping run %s: status.json has no 'status' field", run_dir.root)
        return None
    model, seed = _model_seed_from_path(run_dir)
    model = status.get("model") or model
    seed = status.get("seed", seed)
    state = str(status["status"])
    error = status.get("error")
    if state != runs.STATUS_COMPLETED:
        return RunRecord(model, seed, state, error)
    # status.json is the authority; metrics.json may lag behind it (another process
    # is writing it, or it was deleted), and then the run is not finished for us.
    try:
        metrics = run_files.read_metrics(run_dir.root)
    except FileNotFoundError:
        return RunRecord(model, seed, runs.STATUS_RUNNING, error)
    except (OSError, run_files.UnreadableMetrics) as exc:
        # Writes are atomic, so this is damage, not a write in progress: say so, by path.
        log.warning("%s", exc)
        return RunRecord(model, seed, STATUS_UNREADABLE,
                         f"{run_dir.metrics} is unreadable; rerun the same command to evaluate the run again "
                         "from its checkpoints and rewrite it", root=run_dir.root)
    return RunRecord(metrics.get("model") or model, metrics.get("seed", seed), state, error, metrics, run_dir.root)


def collect_runs(exp_dir) -> list[RunRecord]:
    """Every readable run of an experiment, in folder order."""
    records = []
    for run_dir in runs.iter_run_dirs(exp_dir):
        record = read_run(run_dir)
        if record is not None:
            records.append(record)
    return records


# Where an ensemble's members were chosen: on validation (every method of bench-ensemble) or, for
# method=paper, on the test set (the paper chose its four on its test set; rebuilt like for like).
# A number whose selection saw the test set is labelled wherever it appears.
SELECTED_ON_VALIDATION, SELECTED_ON_TEST = "validation", "test"


def selected_on(metrics: dict) -> str:
    """``test`` for an ensemble whose members were fixed by their test accuracy (method=paper; folders
    written before this was recorded: their ``fixed_members``), else ``validation``."""
    if metrics.get("selected_on"):
        return str(metrics["selected_on"])
    fixed = bool((metrics.get("selection") or {}).get("fixed_members"))
    return SELECTED_ON_TEST if fixed else SELECTED_ON_VALIDATION


def read_ensembles(exp_dir) -> list[dict]:
    """The metrics.json of every finished ensemble of an experiment, by name."""
    found = []
    for path in sorted((Path(exp_dir) / ENSEMBLES_DIR).glob("*/metrics.json")):
        metrics = metrics_or_none(path, "ensemble")
        if metrics is not None:
            found.append({**metrics, "_dir": path.parent})
    return found


def _classes_of(metrics: dict) -> list[str]:
    classes = metrics.get("classes")
    if classes:
        return [str(c) for c in classes]
    return list(metrics.get("test", {}).get("per_class", {}))


def _union_classes(records: Sequence[RunRecord]) -> list[str]:
    """All class names in order of first appearance (runs of one experiment share them)."""
    seen: dict[str, None] = {}
    for record in records:
        for name in _classes_of(record.metrics):
            seen.setdefault(name, None)
    return list(seen)


def main_class_set(records: Sequence[RunRecord]) -> tuple[str, ...] | None:
    """The classes most completed runs of an experiment were trained on (ties: more classes, then
    the first seen). Runs on other classes (a subset, a grouping) are not ranked against them."""
    counts: dict[tuple[str, ...], int] = {}
    for record in records:
        if record.completed:
            key = tuple(_classes_of(record.metrics))
            counts[key] = counts.get(key, 0) + 1
    if not counts:
        return None
    return max(counts, key=lambda k: (counts[k], len(k)))


def off_main_classes(record: RunRecord, main: tuple[str, ...] | None) -> str | None:
    """Why a completed run is not ranked with the others (its classes differ), or None."""
    classes = tuple(_classes_of(record.metrics))
    if main is None or not record.completed or classes == main:
        return None
    return (f"trained on other classes ({', '.join(classes)}) than most runs here ({', '.join(main)}): "
            "not ranked or ensembled with them; give such runs their own experiment_name.")
