"""bench-predict's models: a ``best.pt`` rebuilt for inference, an ensemble folder's members, one class order.

Checkpoints are loaded with ``torch.load(..., weights_only=True)``; several checkpoints must have
exactly the same class names, so the class order cannot be mixed up.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from bench.data.stain import StainNormalizer
from bench.runs import files as run_files
from bench.ensemble.folders import MEMBERS_CSV

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
    stain: StainNormalizer | None = None  # the stain target the run normalised its images to (data.stain)
    backend: str = "torch"  # what runs it: torch (a best.pt or TorchScript), onnxruntime or openvino

    @property
    def decoding(self) -> tuple:
        """What decoding an image for this checkpoint takes: (size, *geometry)."""
        return (self.input_size, *self.geometry)



@contextlib.contextmanager
def reading_export(folder: Path, kind: str, fix: str):
    """The contract of an export folder of ``kind`` (classifier or detector), with every way of failing to
    read or run it turned into a PredictError: an unreadable model.json, the other kind of model, a backend
    that cannot run its format or is not installed."""
    from bench.predict.runtimes import RuntimeMismatch, read_contract

    try:
        contract = read_contract(folder)
        if contract["kind"] != kind:
            raise PredictError(f"{folder} is an exported {contract['kind']} ({contract.get('model')}), not a {kind}: "
                               + ("pass it as --detector with whole smear fields." if kind == "classifier" else
                                  "pass it as --classifier, and a detector run or its export as --detector."))
        yield contract
    except (RuntimeMismatch, ImportError) as exc:
        raise PredictError(str(exc)) from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, PredictError):
            raise
        raise PredictError(f"{folder} is not a readable bench-export folder ({type(exc).__name__}: {exc}); {fix}") from exc


def load_export(folder: Path, backend: str | None = None) -> LoadedCheckpoint:
    """An export folder of a classifier (bench-export: model.json and its model file), run by ``backend``
    (default: its format's own runtime). Its path is the source run's best.pt, so what bench-predict reads
    beside a model (the validation threshold, the temperature) comes from that run when it is at hand."""
    from bench.predict.runtimes import ExportedClassifier, backend_for

    with reading_export(folder, "classifier", "export the run again with bench-export.") as contract:
        chosen = backend_for(contract["format"], backend, folder)
        model = ExportedClassifier(folder / contract["file"], chosen)
        return LoadedCheckpoint(Path(contract["source"]) / "best.pt", str(contract["model"]),
                                [str(c) for c in contract["classes"]], int(contract["input_size"]),
                                [float(v) for v in contract["mean"]], [float(v) for v in contract["std"]], model,
                                geometry=tuple(contract["geometry"]),
                                stain=StainNormalizer.from_record(contract.get("stain")), backend=chosen)


def check_eager_backend(backend: str | None, path: Path) -> None:
    """A best.pt runs on eager PyTorch only: PredictError naming the export step for any other ``--backend``."""
    from bench.predict.runtimes import RuntimeMismatch, backend_for

    try:
        backend_for(None, backend, path)
    except RuntimeMismatch as exc:
        raise PredictError(str(exc)) from exc


def load_checkpoint(path, device: torch.device | str = "cpu", backend: str | None = None) -> LoadedCheckpoint:
    """Rebuild the network of a ``best.pt`` (weights_only load) in eval mode on ``device``; an export folder
    (bench-export) runs on ``backend`` instead (bench.predict.runtimes), on the CPU."""
    from bench.predict.runtimes import is_export
    from bench.training.checkpoints import rebuild_model

    path = Path(path)
    if is_export(path):
        return load_export(path, backend)
    check_eager_backend(backend, path)
    if not path.is_file():
        raise PredictError(f"checkpoint {path} does not exist. Pass a best.pt written by bench-train "
                           "(results/<experiment>/runs/<model>/seed<seed>/best.pt).")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, non-checkpoint files
        raise PredictError(f"could not load checkpoint {path} ({type(exc).__name__}: {exc}). It must be a "
                           "best.pt written by bench-train, loadable with weights_only=True.") from exc
    if isinstance(ckpt, dict) and ckpt.get("task") == "detection":
        raise PredictError(f"{path} is a detector's best.pt ({ckpt.get('model_name')}), not a cell classifier's. "
                           "Pass it as --detector DET (with whole smear fields), and a classifier's best.pt, run "
                           "folder or ensemble folder as --classifier (or -c / --ensemble for single-cell images).")
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
                            geometry=tuple(ckpt.get("geometry") or ("resize",)),
                            stain=StainNormalizer.from_record(ckpt.get("stain")))


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
