"""The chain's two kinds of model: a detector run and the classifier(s) that type its boxes.

Which detector labels are typed (``--classify-labels``): the ones named; with ``LABEL=CLS``
classifiers, those labels. The default, said in the summary: a detector label is typed when it
is one of the classifier's classes (a detector that already tells cell types apart gets a second
opinion from the classifier) or a generic white-cell name (:data:`WHITE_CELL_NAMES`, any case);
every other label (red cells, artefacts) is counted as detected and not typed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from bench.runs import files as run_files
from bench.detection.metrics import class_thresholds
from bench.models.detection_zoo import set_max_detections
from bench.ensemble.voting import HARD, SOFT
from bench.predict import METHODS
from bench.predict.checkpoints import (LoadedCheckpoint, PredictError, check_eager_backend, check_same_classes,
                                       ensemble_checkpoints, load_checkpoint, reading_export)
from bench.predict.tables import ValidationRecord, validation_record

WHITE_CELL_NAMES = ("wbc", "white", "white cell", "white_cell", "white cells", "leukocyte", "leukocytes",
                    "leucocyte", "leucocytes", "mn", "pmn", "mononuclear", "polymorphonuclear")
DEFAULT_SCORE_THRESHOLD = 0.5


@dataclass
class LoadedDetector:
    path: Path
    model_name: str
    labels: list[str]
    input_size: int
    model: torch.nn.Module
    score_thresholds: dict[str, float]  # per label
    threshold_source: str  # where the thresholds came from, for the summary
    max_detections: int = 300  # boxes per field at most (model.max_detections of its run)
    notes: list[str] = field(default_factory=list)  # what a reader of its numbers must know


@dataclass
class Classifier:
    """One checkpoint or one ensemble: what types the boxes of some detector labels."""

    source: Path
    checkpoints: list[LoadedCheckpoint]
    weights: list[float]
    voting: str
    record: ValidationRecord
    class_names: list[str] = field(default_factory=list)

    @property
    def input_size(self) -> int:
        return max(c.input_size for c in self.checkpoints)


# --------------------------------------------------------------------------- detector
def load_detector(source, device, score_threshold: float | None = None, backend: str | None = None) -> LoadedDetector:
    """A detector run folder (or its best.pt) rebuilt in eval mode, or its bench-export folder run by
    ``backend``; the score thresholds its run chose per label on validation data unless one is given for all."""
    from bench.predict.runtimes import is_export

    if is_export(Path(source)):
        return load_exported_detector(Path(source), score_threshold, backend)
    check_eager_backend(backend, Path(source))
    from bench.training.checkpoints import rebuild_model

    source = Path(source)
    path = source / "best.pt" if source.is_dir() else source
    if not path.is_file():
        raise PredictError(f"--detector {source}: no detector checkpoint there. Pass a detector run folder "
                           "(results/<experiment>/runs/<detector>/seed<seed>) or its best.pt, written by "
                           "bench-train model=<detector>.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PredictError(f"could not load --detector {path} ({type(exc).__name__}: {exc}).") from exc
    if not isinstance(ckpt, dict) or ckpt.get("task") != "detection":
        raise PredictError(f"--detector {path} is not a detector's best.pt (it holds "
                           f"{ckpt.get('model_name', 'something else') if isinstance(ckpt, dict) else 'no dict'}, "
                           "a classifier?). Pass classifiers with --classifier, a detector run with --detector.")
    try:
        model = rebuild_model(ckpt).to(device)
    except Exception as exc:
        raise PredictError(f"could not rebuild the detector {ckpt['model_name']} from {path} "
                           f"({type(exc).__name__}: {exc}).") from exc
    labels = [str(c) for c in ckpt["class_names"]]
    if score_threshold is not None:
        found, why = float(score_threshold), "--score-threshold"
    else:
        try:
            found = run_files.read_metrics(path.parent)["score_threshold"]
            why = f"chosen per label on the detector's validation fields ({path.parent / 'metrics.json'})"
        except (OSError, ValueError, KeyError, TypeError):
            found = DEFAULT_SCORE_THRESHOLD
            why = f"default {DEFAULT_SCORE_THRESHOLD} (no metrics.json with a score_threshold beside {path.name})"
    thresholds = dict(zip(labels, class_thresholds(found, labels).tolist()))
    cap, notes = detector_cap(ckpt, path)
    set_max_detections(model, cap)
    return LoadedDetector(path, str(ckpt["model_name"]), labels, int(ckpt["input_size"]), model, thresholds, why,
                          cap, notes)


def detector_cap(ckpt: dict, path: Path) -> tuple[int, list[str]]:
    """The boxes per field its run allowed (``model.max_detections``); a run from before that option
    gets the option's default here, and its own metrics are said to be capped at torchvision's 100."""
    from bench.config import ModelConfig

    if ckpt.get("max_detections"):
        return int(ckpt["max_detections"]), []
    return ModelConfig.max_detections, [
        f"the detector {path} was trained before model.max_detections: here it keeps up to "
        f"{ModelConfig.max_detections} boxes per field, but its run's metrics.json (and the score thresholds "
        "chosen with it) came from at most 100 per field; rerun its bench-train command after deleting that "
        "metrics.json to score it at the cap (no epoch is trained again)."]


def load_exported_detector(folder: Path, score_threshold: float | None, backend: str | None) -> LoadedDetector:
    """A detector's bench-export folder: its model.json's labels, thresholds and cap; the model on ``backend``.
    Its path is the source run's best.pt, so the chain's check of the fields the detector saw still finds
    that run's experiment when it is at hand."""
    from bench.predict.runtimes import ExportedDetector, backend_for

    with reading_export(folder, "detector", "export the detector run again with bench-export.") as contract:
        model = ExportedDetector(folder / contract["file"], backend_for(contract["format"], backend, folder))
        labels = [str(c) for c in contract["labels"]]
        if score_threshold is not None:
            thresholds, why = {lab: float(score_threshold) for lab in labels}, "--score-threshold"
        else:
            thresholds = {lab: float(contract["score_thresholds"][lab]) for lab in labels}
            why = f"{contract['threshold_source']} (carried in {folder / 'model.json'})"
        return LoadedDetector(Path(contract["source"]) / "best.pt", str(contract["model"]), labels,
                              int(contract["input_size"]), model, thresholds, why, int(contract["max_detections"]))


# --------------------------------------------------------------------------- classifiers
def load_classifier(source, device, method: str | None = None, backend: str | None = None) -> Classifier:
    """A best.pt, a run folder holding one, an ensemble folder (bench-ensemble), or the export folder of
    either (bench-export), run by ``backend``."""
    from bench.predict.runtimes import is_export

    source = Path(source)
    weights, voting = None, None
    if source.is_dir() and (source / "members.csv").is_file():
        paths, weights, voting = ensemble_checkpoints(source)
        ensemble_dir = source
    elif is_export(source):
        paths, ensemble_dir = [source], None
    elif source.is_dir() and (source / "best.pt").is_file():
        paths, ensemble_dir = [source / "best.pt"], None
    elif source.is_file():
        paths, ensemble_dir = [source], None
    else:
        raise PredictError(f"--classifier {source}: not a classifier. Pass a best.pt, a run folder "
                           "(results/<exp>/runs/<model>/seed<seed>) or an ensemble folder (results/<exp>/ensembles/<name>).")
    checkpoints = [load_checkpoint(p, device, backend) for p in paths]
    names = check_same_classes(checkpoints)
    paths = [c.path for c in checkpoints]  # an export stands for its source run (its validation record)
    if method is not None:
        voting = METHODS[method]
    elif voting not in (HARD, SOFT):
        voting = SOFT if len(checkpoints) == 1 else HARD
    weights = list(weights or [1.0] * len(checkpoints))
    record = validation_record([] if ensemble_dir else paths, ensemble_dir, voting, names)
    return Classifier(source, checkpoints, weights, voting, record, names)


def parse_classifier_args(values: Sequence[str]) -> dict[str | None, Path]:
    """``--classifier PATH`` (key None: one classifier) or ``--classifier LABEL=PATH`` (repeatable)."""
    out: dict[str | None, Path] = {}
    for value in values:
        label, sep, rest = str(value).partition("=")
        key, path = (label, Path(rest)) if sep and not Path(value).exists() else (None, Path(value))
        if key in out:
            raise PredictError(f"--classifier is given twice for {key or 'all labels'}; give one per detector label "
                               "(LABEL=PATH) or one for all.")
        out[key] = path
    if None in out and len(out) > 1:
        raise PredictError("--classifier: give either one classifier (PATH) or one per detector label (LABEL=PATH), "
                           "not both.")
    return out


def default_classify_labels(detector_labels: Sequence[str], class_names: Sequence[str]) -> list[str]:
    """Detector labels that are classifier classes or generic white-cell names (any case)."""
    classes = {c.lower() for c in class_names}
    return [lab for lab in detector_labels if lab.lower() in classes or lab.lower() in WHITE_CELL_NAMES]


def route_labels(detector: LoadedDetector, classifiers: dict[str | None, Classifier],
                 requested: Sequence[str] | None) -> tuple[dict[str, Classifier], str]:
    """Which classifier types each detector label, and a sentence saying why those labels."""
    known = detector.labels
    if None not in classifiers:  # LABEL=PATH
        unknown = [lab for lab in classifiers if lab not in known]
        if unknown:
            raise PredictError(f"--classifier names detector label(s) {unknown} that the detector does not have "
                               f"(its labels: {known}).")
        if requested and set(requested) != set(classifiers):
            raise PredictError(f"--classify-labels {list(requested)} and the labels of --classifier LABEL=PATH "
                               f"{list(classifiers)} disagree; the LABEL=PATH form already names them.")
        return dict(classifiers), "the labels given with --classifier LABEL=PATH"
    one = classifiers[None]
    if requested:
        unknown = [lab for lab in requested if lab not in known]
        if unknown:
            raise PredictError(f"--classify-labels {unknown}: not labels of the detector (its labels: {known}).")
        return {lab: one for lab in requested}, "--classify-labels"
    labels = default_classify_labels(known, one.class_names)
    if not labels:
        raise PredictError(f"none of the detector's labels {known} is one of the classifier's classes or a "
                           f"white-cell name ({', '.join(WHITE_CELL_NAMES[:4])}, ...), so no box would be typed. Say which "
                           "detector labels hold the cells to classify: --classify-labels LABEL[,LABEL].")
    return {lab: one for lab in labels}, ("default: detector labels that are classifier classes or white-cell "
                                          "names; the others are counted as detected")
