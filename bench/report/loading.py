"""Reading an experiment folder for the report: completed runs, ensembles, reference tables."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from bench.results import rows as leaderboard_rows
from bench.results import published as paper_reference
from bench.results import records as result_records
from bench import runs
from bench.runs import files as run_files
from bench.ensemble.candidates import classes_of, member_id
from bench.ensemble.folders import ENSEMBLES_DIR

log = logging.getLogger(__name__)

TABLE2_CSV = "gavas2021_table2.csv"
TABLE3_CSV = "gavas2021_table3.csv"


@dataclass
class Entry:
    """A completed run or an ensemble, as the tables and figures see it."""

    key: str  # "model/seed<seed>" (as bench.ensemble names members) or "ensemble:<name>"
    kind: str  # result_records.KIND_MODEL or result_records.KIND_ENSEMBLE
    model: str  # model name, or the ensemble's name
    seed: int | None
    label: str  # for tables and figures
    root: Path  # run folder or ensemble folder
    metrics: dict
    rank: int | None = None  # validation rank (runs only)

    @property
    def val_acc(self) -> float:
        return leaderboard_rows._num((self.metrics.get("val") or {}).get("accuracy"))

    @property
    def test_acc(self) -> float:
        return leaderboard_rows._num((self.metrics.get("test") or {}).get("accuracy"))

    def predictions_path(self, split: str) -> Path:
        return self.root / f"predictions_{split}.csv"

    @property
    def recipe(self) -> str:
        """The experiment whose recipe the run was measured against (runs from before recipes
        were recorded: gavas2021's, as the leaderboard reads them)."""
        return self.metrics.get("recipe") or paper_reference.PROTOCOL_RECIPE

    @property
    def follows_gavas(self) -> bool:
        """A run of experiment=gavas2021 with no departure: the only kind whose number may be
        read against Gavas & Olpadkar's published one as a replication."""
        return self.recipe == paper_reference.PROTOCOL_RECIPE and self.metrics.get("protocol_deviations") == []


@dataclass
class Predictions:
    """Saved per-image predictions of one split, sorted by path."""

    paths: np.ndarray
    labels: np.ndarray  # class indices
    predicted: np.ndarray

    @property
    def correct(self) -> np.ndarray:
        return self.labels == self.predicted

    def same_images(self, other: "Predictions") -> bool:
        return (len(self.paths) == len(other.paths) and bool((self.paths == other.paths).all())
                and bool((self.labels == other.labels).all()))


@dataclass
class ExperimentResults:
    """Everything the report shows about one experiment, read once.

    ``runs``: completed runs in leaderboard (validation) order; ``unfinished``: failed and
    running runs with their error; ``ensembles``: by validation accuracy, then name;
    ``ensemble``: the one compared against (highest validation accuracy, or the one
    named); ``board``: the model rows of the leaderboard (:func:`bench.results.rows.model_rows_frame`).
    Prediction and history files are read on first use and cached.
    """

    exp_dir: Path
    classes: list[str]
    board: pd.DataFrame
    runs: list[Entry]
    unfinished: pd.DataFrame
    ensembles: list[Entry]
    ensemble: Entry | None
    reference_dir: Path | None
    data_kind: str | None = None
    data_root: str | None = None
    detectors: list[Entry] = field(default_factory=list)  # detection runs, validation order
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.exp_dir.name

    @property
    def best(self) -> Entry | None:
        """The run ranked first by validation accuracy."""
        return self.runs[0] if self.runs else None

    @property
    def entries(self) -> list[Entry]:
        return [*self.runs, *self.ensembles]

    @property
    def several_seeds(self) -> bool:
        models = [e.model for e in self.runs]
        return len(models) != len(set(models))

    def predictions(self, entry: Entry, split: str = "test") -> Predictions | None:
        key = ("pred", entry.key, split)
        if key not in self._cache:
            self._cache[key] = _read_predictions(entry.predictions_path(split), self.classes)
        return self._cache[key]

    def history(self, entry: Entry) -> pd.DataFrame | None:
        key = ("hist", entry.key)
        if key not in self._cache:
            path = entry.root / "history.csv"
            try:
                self._cache[key] = pd.read_csv(path)
            except (OSError, ValueError) as exc:
                log.debug("no history at %s: %s", path, exc)
                self._cache[key] = None
        return self._cache[key]

    def class_support(self, split: str = "test") -> dict[str, int]:
        """Images per class in ``split`` (every run of an experiment shares the split)."""
        for entry in self.entries:
            per_class = (entry.metrics.get(split) or {}).get("per_class") or {}
            if per_class:
                return {str(c): int(v.get("support", 0)) for c, v in per_class.items()}
        return {}

    def n_test(self) -> int | None:
        """Number of test images (of the best run; all runs of an experiment share the split)."""
        for entry in self.entries:
            n = (entry.metrics.get("test") or {}).get("n")
            if n:
                return int(n)
        return None

    def reference_table(self, filename: str) -> pd.DataFrame | None:
        key = ("ref", filename)
        if key not in self._cache:
            table = None
            if self.reference_dir is not None and (self.reference_dir / filename).is_file():
                try:
                    table = pd.read_csv(self.reference_dir / filename)
                except (OSError, ValueError) as exc:
                    log.warning("could not read reference table %s: %s", self.reference_dir / filename, exc)
            self._cache[key] = table
        return self._cache[key]


def _read_predictions(path: Path, classes: Sequence[str]) -> Predictions | None:
    try:
        frame = pd.read_csv(path, usecols=["path", "label", "predicted"], dtype=str, keep_default_na=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("could not read %s: %s", path, exc)
        return None
    index = {c: i for i, c in enumerate(classes)}
    unknown = (set(frame["label"]) | set(frame["predicted"])) - set(index)
    if unknown:
        log.warning("%s has class names %s outside %s; its statistics are left out", path, sorted(unknown), classes)
        return None
    frame = frame.sort_values("path", kind="mergesort")
    return Predictions(frame["path"].to_numpy(str), frame["label"].map(index).to_numpy(int),
                       frame["predicted"].map(index).to_numpy(int))


def _data_info(run_dir: runs.RunDir, metrics: dict) -> tuple[str | None, str | None]:
    kind = None
    try:
        import yaml  # PyYAML comes with hydra/omegaconf

        with open(run_dir.config, encoding="utf-8") as fh:
            kind = ((yaml.safe_load(fh) or {}).get("data") or {}).get("kind")
    except Exception as exc:  # a missing or odd config only loses the data note
        log.debug("could not read data kind from %s: %s", run_dir.config, exc)
    return kind, metrics.get("data_root")


def is_fixed(entry: Entry) -> bool:
    """An ensemble whose members were fixed in advance by their test accuracy (``bench-ensemble
    method=paper``): selected on test, and labelled so wherever it appears."""
    return result_records.selected_on(entry.metrics) == result_records.SELECTED_ON_TEST


def _load_ensembles(exp_dir: Path) -> list[Entry]:
    out = []
    folder = exp_dir / ENSEMBLES_DIR
    if not folder.is_dir():
        return out
    for metrics_path in sorted(folder.glob("*/metrics.json")):
        try:
            metrics = run_files.read_metrics(metrics_path, "ensemble")
        except (OSError, run_files.UnreadableMetrics) as exc:
            log.warning("skipping ensemble %s: %s", metrics_path.parent, exc)
            continue
        name = str(metrics.get("name") or metrics_path.parent.name)
        entry = Entry(f"ensemble:{name}", result_records.KIND_ENSEMBLE, name, None, f"ensemble {name}",
                      metrics_path.parent, metrics)
        if is_fixed(entry):  # every table, figure and "p vs" column that shows it says so
            entry.label += " (selected on test)"
        out.append(entry)
    out.sort(key=lambda e: (-e.val_acc if e.val_acc == e.val_acc else math.inf, e.model))
    return out


def load_results(exp_dir, *, reference_dir: Path | str | None = "default",
                 ensemble: str | None = None) -> ExperimentResults:
    """Read an experiment folder (runs, ensembles, reference tables) for the report.

    ``reference_dir``: folder of the published tables; ``"default"`` is the repository's
    ``bench/reference`` (shipped with the package), None leaves them out. ``ensemble``: the ensemble to compare
    against by name (default: highest validation accuracy).
    """
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise FileNotFoundError(f"{exp_dir} is not a folder; pass an experiment folder written by bench-train "
                                "(results/<experiment>), e.g. after `bench-train -m experiment=quickstart`.")
    if reference_dir == "default":
        reference_dir = paper_reference.reference_dir()
    reference_dir = Path(reference_dir) if reference_dir is not None else None
    pairs = []
    for run_dir in runs.iter_run_dirs(exp_dir):
        record = result_records.read_run(run_dir)
        if record is not None:
            pairs.append((run_dir, record))
    reference = paper_reference.load_reference(reference_dir / TABLE2_CSV) if reference_dir is not None else {}
    board = leaderboard_rows.model_rows_frame([r for _, r in pairs], reference=reference)
    by_id = {(r.model, r.seed): (d, r) for d, r in pairs}

    completed = board[board["status"] == runs.STATUS_COMPLETED]
    models = completed["model"].tolist()
    several = len(models) != len(set(models))
    entries, detectors, data_kind, data_root = [], [], None, None
    for row in completed.itertuples(index=False):
        seed = None if pd.isna(row.seed) else int(row.seed)
        run_dir, record = by_id[(row.model, seed)]
        label = f"{row.model} s{seed}" if several else str(row.model)
        entry = Entry(member_id(row.model, seed), row.kind, str(row.model), seed, label, run_dir.root,
                      record.metrics, None if pd.isna(row.rank) else int(row.rank))
        (detectors if row.kind == result_records.KIND_DETECTOR else entries).append(entry)
        if data_kind is None:
            data_kind, data_root = _data_info(run_dir, record.metrics)

    unfinished = board.loc[board["status"] != runs.STATUS_COMPLETED, ["model", "seed", "status", "error"]]
    classes = result_records._union_classes([r for _, r in pairs if r.completed])
    ensembles = _load_ensembles(exp_dir)
    if not classes and ensembles:
        classes = classes_of(ensembles[0].metrics)
    if classes and not paper_reference.is_pbc_classes(classes):
        reference_dir = None  # the published tables are PBC's; the data note says why they are absent
    chosen = None
    if ensemble is not None:
        chosen = next((e for e in ensembles if e.model == ensemble), None)
        if chosen is None:
            raise ValueError(f"no ensemble named {ensemble!r} in {exp_dir / ENSEMBLES_DIR} "
                             f"(found: {', '.join(e.model for e in ensembles) or 'none'})")
    elif ensembles:
        # The headline ensemble is one chosen on validation; a fixed one (the paper's members,
        # chosen on their test set) is shown beside it, never instead of it.
        chosen = next((e for e in ensembles if not is_fixed(e)), ensembles[0])
    if detectors:  # the classifier sections are about classifiers; detectors get their own
        classes = result_records._union_classes([r for _, r in pairs if r.completed and r.metrics.get("task") != "detection"])
    return ExperimentResults(exp_dir, classes, board, entries, unfinished.reset_index(drop=True), ensembles,
                             chosen, reference_dir, data_kind, data_root, detectors=detectors)
