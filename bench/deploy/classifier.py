"""A classifier run exported: the network in ``--format`` (onnx, openvino or torchscript: :mod:`.formats`),
``MODEL_CARD.md`` (:mod:`.card`), the run's ``config.yaml``, and ``model.json``, the contract a program
needs to feed it (input size, how an image is resized or cropped, the stain target, mean and std, class
order, the temperature and the referral threshold chosen on validation).

The export is checked before it is kept: the run's validation images, decoded and normalised as
bench-predict does, go through PyTorch and through every runtime that can run the format
(bench.predict.runtimes: ONNX Runtime and OpenVINO for onnx, OpenVINO for openvino, PyTorch for
torchscript); the softmax probabilities must agree within ``TOLERANCE`` and give the same class for
every image. The files are written in a staged folder beside ``--out`` and moved into place only when
the check passes: a failed export leaves nothing behind.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench import runs
from bench.deploy.folders import ExportError, check_new_folder, copy_config, staged
from bench.deploy.formats import OPSET, write_classifier
from bench.predict.runtimes import FORMAT_BACKENDS, ExportedClassifier

TOLERANCE = 1e-4  # max |difference| of a probability, PyTorch vs the exported model
CHECK_IMAGES = 256  # validation images the check runs (all of them when fewer)


def export_run(run_dir, out_dir, *, fmt: str = "onnx", images: list[Path] | None = None,
               tolerance: float = TOLERANCE) -> dict:
    """Export the run's best.pt to ``out_dir`` (the model file, model.json, MODEL_CARD.md, config.yaml)
    after checking it; returns the contract written to model.json (with the check's numbers)."""
    from bench.predict import load_checkpoint

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    check_new_folder(out_dir)
    ckpt = load_checkpoint(run_dir / "best.pt" if run_dir.is_dir() else run_dir)
    owner = ckpt.path.parent
    files = images if images is not None else validation_files(owner)
    batch = _decoded(ckpt, files[:CHECK_IMAGES])
    with staged(out_dir) as work:
        name = write_classifier(ckpt.model, batch[:2], work, fmt)
        check = check_classifier(ckpt.model, work / name, fmt, batch, tolerance)
        contract = _contract(ckpt, owner, fmt, name, check)
        runs.write_json_atomic(work / "model.json", contract)
        if (owner / "metrics.json").exists():
            from bench.deploy.card import model_card

            runs.write_text_atomic(work / "MODEL_CARD.md", model_card(owner, contract))
        copy_config(owner, work)
    return contract


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


def check_classifier(model: torch.nn.Module, path: Path, fmt: str, batch: np.ndarray, tolerance: float) -> dict:
    """PyTorch's probabilities against each runtime that can run ``fmt`` (32 images a call, so the
    batch dimension is tried at other sizes than the export's example); ExportError when one differs."""
    with torch.inference_mode():
        out = model.eval()(torch.from_numpy(batch))
        logits = out if isinstance(out, torch.Tensor) else tuple(out)[0]
        want = torch.softmax(logits.double(), dim=1).numpy()
    per = {}
    for backend in runnable(fmt):
        runtime = ExportedClassifier(path, backend)
        got = np.concatenate([torch.softmax(runtime(torch.from_numpy(batch[i:i + 32])).double(), dim=1).numpy()
                              for i in range(0, len(batch), 32)])
        diff = float(np.abs(got - want).max())
        same = int((got.argmax(1) == want.argmax(1)).sum())
        if diff > tolerance or same != len(batch):
            raise ExportError(f"the {fmt} model run by {backend} does not give PyTorch's answers on {len(batch)} "
                              f"validation image(s): max |probability difference| {diff:.2e} (allowed "
                              f"{tolerance:.0e}), same class for {same}. Nothing was written.")
        per[backend] = {"max_abs_prob_diff": diff, "same_class": same}
    return {"images": len(batch), "max_abs_prob_diff": max(p["max_abs_prob_diff"] for p in per.values()),
            "same_class": min(p["same_class"] for p in per.values()), "backends": per}


def runnable(fmt: str) -> list[str]:
    """The installed runtimes that can run ``fmt`` (its own one first; at least that one, or ExportError)."""
    import importlib.util

    found = [b for b in FORMAT_BACKENDS[fmt] if b == "torch" or importlib.util.find_spec(b) is not None]
    if not found or found[0] != FORMAT_BACKENDS[fmt][0]:
        need = FORMAT_BACKENDS[fmt][0]
        raise ExportError(f"checking a {fmt} export needs {need}, which is not installed: pip install -e '.[deploy]'.")
    return found


def _contract(ckpt, owner: Path, fmt: str, name: str, check: dict) -> dict:
    from bench.results.confidence import validation_choices

    chosen = validation_choices(owner)
    return {
        "kind": "classifier", "format": fmt, **({"opset": OPSET} if fmt != "torchscript" else {}), "file": name,
        "input": "image", "input_shape": "(N, 3, input_size, input_size) float32, RGB scaled to [0, 1] then normalised "
        "with mean and std", "output": "logits (softmax them)",
        "backends": list(FORMAT_BACKENDS[fmt]),
        "model": ckpt.model_name, "classes": ckpt.class_names, "input_size": ckpt.input_size,
        "geometry": list(ckpt.geometry), "mean": ckpt.mean, "std": ckpt.std,
        "stain": None if ckpt.stain is None else ckpt.stain.record,
        "temperature": None if chosen is None else chosen[0],
        "referral_threshold": None if chosen is None else chosen[1],
        "source": str(owner), "torch": torch.__version__, "check": check,
    }
