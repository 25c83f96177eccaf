"""A classifier run as ONNX: ``model.onnx`` (images in, logits out, any batch size), ``MODEL_CARD.md``
(:mod:`.card`), the run's ``config.yaml``, and ``model.json``,
the contract a program needs to feed it (input size, how an image is resized or cropped, the stain
target, mean and std, class order, the temperature and the referral threshold chosen on validation).

The export is checked before it is kept: the run's validation images, decoded and normalised as
bench-predict does, go through PyTorch and through ONNX Runtime; the softmax probabilities must agree
within ``TOLERANCE`` and give the same class for every image. The files are written in a temporary
folder beside ``--out`` and moved into place only when the check passes: a failed export leaves
nothing behind.

The exporter is torch.onnx's ``dynamo=True`` path (torch.export), with the batch dimension dynamic.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench import runs

TOLERANCE = 1e-4  # max |difference| of a probability, PyTorch vs ONNX Runtime
CHECK_IMAGES = 256  # validation images the check runs (all of them when fewer)
OPSET = 18
TIE_RULES = ("bench.ensemble.voting. Hard: most (weighted) votes, then the largest (weighted) "
             "probability sum, then the class of the best-ranked member voting for a tied class, "
             "then the lowest class index. Soft: the largest (weighted) mean probability, then "
             "more votes, then the best-ranked member's vote, then the lowest class index. "
             "Scores within 1e-9 are tied.")


class ExportError(ValueError):
    """An export that cannot be made or did not pass its check: the message says which and why."""


def onnx_probs(session, batch: np.ndarray) -> np.ndarray:
    """Softmax probabilities of an ONNX Runtime session on a normalised float batch (N, 3, S, S)."""
    logits = session.run(None, {"image": batch.astype(np.float32)})[0]
    return torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()


def export_onnx(run_dir, out_dir, *, images: list[Path] | None = None, tolerance: float = TOLERANCE) -> dict:
    """Export the run's best.pt to ``out_dir`` (model.onnx, model.json) after checking it; returns the
    contract written to model.json (with the check's numbers)."""
    from bench.predict import load_checkpoint

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    check_new_folder(out_dir)
    ckpt = load_checkpoint(run_dir / "best.pt" if run_dir.is_dir() else run_dir)
    owner = ckpt.path.parent
    files = images if images is not None else validation_files(owner)
    batch = _decoded(ckpt, files[:CHECK_IMAGES])
    with staged(out_dir) as work:
        export_module(ckpt.model, batch[:2], work / "model.onnx")
        check = _check(ckpt.model, work / "model.onnx", batch, tolerance)
        contract = _contract(ckpt, owner, check)
        runs.write_json_atomic(work / "model.json", contract)
        if (owner / "metrics.json").exists():
            from bench.deploy.card import model_card

            runs.write_text_atomic(work / "MODEL_CARD.md", model_card(owner, contract))
        if (owner / "config.yaml").exists():
            shutil.copy2(owner / "config.yaml", work / "config.yaml")
    return contract


def check_new_folder(out_dir: Path) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ExportError(f"--out {out_dir} exists and is not empty; choose a new folder (nothing is overwritten).")


@contextlib.contextmanager
def staged(out_dir: Path):
    """A temporary folder beside ``out_dir`` to write into; moved into place when the block ends without an
    error, removed otherwise: a failed export leaves nothing behind."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield work
        if out_dir.exists():
            out_dir.rmdir()
        work.chmod(0o755)  # mkdtemp's folder is private
        work.rename(out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def validation_files(owner: Path) -> list[Path]:
    """The run's validation images (predictions_val.csv, under the data root metrics.json names)."""
    import pandas as pd

    metrics = runs.read_json(owner / "metrics.json") if (owner / "metrics.json").exists() else {}
    root = str(metrics.get("data_root") or "")
    try:
        paths = pd.read_csv(owner / "predictions_val.csv", dtype={"path": str}, keep_default_na=False)["path"]
    except (OSError, KeyError, ValueError):
        paths = []
    if "=" in root:  # data=multi_source: "name=PATH; ..." and paths "<name>/<path in its folder>"
        sources = dict(part.strip().split("=", 1) for part in root.split(";") if "=" in part)
        files = [Path(sources.get(p.split("/", 1)[0], "")) / p.split("/", 1)[-1] for p in paths]
    else:
        files = [Path(root) / p for p in paths]
    if not len(files) or not all(f.is_file() for f in files[:CHECK_IMAGES]):
        raise ExportError(f"the run's validation images are not readable under {root or '(no data_root)'} (needed to "
                          "check the export against PyTorch); pass --check-images FOLDER with images like them.")
    return files


def _decoded(ckpt, files: list[Path]) -> np.ndarray:
    """The normalised float batch bench-predict would feed the model (decoding, stain target, mean/std)."""
    from bench.data.imagefolder import try_decode
    from bench.data.transforms import Normalize

    arrays = [a for a, _ in (try_decode((str(f), *ckpt.decoding)) for f in files) if a is not None]
    if not arrays:
        raise ExportError(f"none of the {len(files)} check image(s) could be decoded.")
    if ckpt.stain is not None:
        arrays = ckpt.stain.apply_all(arrays)
    x = torch.from_numpy(np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2)))
    return Normalize(ckpt.mean, ckpt.std)(x).numpy()


def export_module(model: torch.nn.Module, example: np.ndarray, path: Path) -> None:
    import warnings

    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval(), (torch.from_numpy(example),), str(path), input_names=["image"],
                              output_names=["logits"], dynamic_shapes=({0: batch},), dynamo=True, opset_version=OPSET,
                              verbose=False)
    except Exception as exc:
        raise ExportError(f"torch.onnx could not export this model ({type(exc).__name__}: {str(exc)[:300]}).") from exc


def _check(model: torch.nn.Module, path: Path, batch: np.ndarray, tolerance: float) -> dict:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        out = model.eval()(torch.from_numpy(batch))
        logits = out if isinstance(out, torch.Tensor) else tuple(out)[0]
        want = torch.softmax(logits.double(), dim=1).numpy()
    got = np.concatenate([onnx_probs(session, batch[i:i + 32]) for i in range(0, len(batch), 32)])
    diff = float(np.abs(got - want).max())
    same = int((got.argmax(1) == want.argmax(1)).sum())
    if diff > tolerance or same != len(batch):
        raise ExportError(f"the ONNX model does not give PyTorch's answers on {len(batch)} validation image(s): max "
                          f"|probability difference| {diff:.2e} (allowed {tolerance:.0e}), same class for {same}. "
                          "Nothing was written.")
    return {"images": len(batch), "max_abs_prob_diff": diff, "same_class": same}


def _contract(ckpt, owner: Path, check: dict) -> dict:
    from bench.results.confidence import validation_choices

    chosen = validation_choices(owner)
    return {
        "format": "onnx", "opset": OPSET, "file": "model.onnx", "input": "image", "output": "logits (softmax them)",
        "model": ckpt.model_name, "classes": ckpt.class_names, "input_size": ckpt.input_size,
        "geometry": list(ckpt.geometry), "mean": ckpt.mean, "std": ckpt.std,
        "stain": None if ckpt.stain is None else ckpt.stain.record,
        "temperature": None if chosen is None else chosen[0],
        "referral_threshold": None if chosen is None else chosen[1],
        "source": str(owner), "torch": torch.__version__, "check": check,
    }


def export_ensemble(ens_dir, out_dir, *, images: list[Path] | None = None, tolerance: float = TOLERANCE) -> dict:
    """An ensemble folder (bench-ensemble) exported: each member as its own checked export under
    ``members/``, ``members.csv`` naming them in rank order with their weights, and the ensemble's
    metrics.json (its voting and validation threshold), so ``bench-predict --ensemble OUT`` votes as the
    ensemble does, with bench.ensemble.voting's tie rules. ``ensemble.json`` states the vote for other programs."""
    import pandas as pd

    from bench.ensemble.folders import MEMBERS_CSV
    from bench.predict.checkpoints import ensemble_checkpoints

    ens_dir, out_dir = Path(ens_dir), Path(out_dir)
    check_new_folder(out_dir)
    paths, weights, voting = ensemble_checkpoints(ens_dir)
    with staged(out_dir) as work:
        members = pd.read_csv(ens_dir / MEMBERS_CSV)
        folders = []
        for i, path in enumerate(paths):
            folder = work / "members" / f"{i + 1}-{path.parent.parent.name}-{path.parent.name}"
            export_onnx(path, folder, images=images, tolerance=tolerance)
            folders.append(folder)
        final = [out_dir / f.relative_to(work) for f in folders]
        members["checkpoint"] = [str(f) for f in final]  # absolute: the folder is moved into place below
        runs.write_csv_atomic(work / MEMBERS_CSV, members)
        shutil.copy2(ens_dir / "metrics.json", work / "metrics.json")
        contract = {"format": "onnx-ensemble", "voting": voting, "weights": weights,
                    "members": [str(f.relative_to(out_dir)) for f in final], "source": str(ens_dir),
                    "tie_rules": TIE_RULES}
        runs.write_json_atomic(work / "ensemble.json", contract)
    return contract
