"""A detector run (the smear chain's first stage) exported: ``model.onnx`` or OpenVINO's model.xml
(:mod:`.formats`), ``model.json`` (labels, the field's resize rule, the per-label score thresholds its run
chose on validation, the cap on boxes), the run's ``config.yaml``.

The check: up to ``CHECK_FIELDS`` of the run's validation fields (its experiment's manifest), resized as
the chain resizes them, go through PyTorch and through every runtime that can run the format. The boxes
the chain keeps (at or above their label's threshold) must be the same boxes: as many, each matched to
one of the same label within ``BOX_TOLERANCE`` pixels and ``SCORE_TOLERANCE`` in score. Boxes below the
thresholds are not compared: the chain never sees them, and near-equal scores there can swap places
between runtimes without changing a count.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench import runs
from bench.deploy.classifier import runnable
from bench.deploy.folders import ExportError, check_new_folder, copy_config, staged
from bench.deploy.formats import DETECTOR_OPSET, write_detector
from bench.predict.runtimes import FORMAT_BACKENDS, ExportedDetector

CHECK_FIELDS = 16
BOX_TOLERANCE = 0.05  # pixels of the resized field
SCORE_TOLERANCE = 1e-4


def export_detector(run_dir, out_dir, *, fmt: str = "onnx", fields: list[Path] | None = None) -> dict:
    from bench.cascade.models import load_detector
    from bench.detection.fields import field_tensor
    from bench.detection.data import open_field

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    check_new_folder(out_dir)
    det = load_detector(run_dir, "cpu")
    owner = det.path.parent
    files = fields if fields is not None else validation_fields(det.path)
    tensors = [field_tensor(open_field(f), det.input_size)[0].float().div(255.0) for f in files[:CHECK_FIELDS]]
    thresholds = torch.tensor([det.score_thresholds[lab] for lab in det.labels])
    with staged(out_dir) as work:
        name = write_detector(det.model, tensors[0], work, fmt)
        check = check_detector(det.model, work / name, fmt, tensors, thresholds)
        contract = {
            "kind": "detector", "format": fmt, **({"opset": DETECTOR_OPSET} if fmt == "onnx" else {}), "file": name,
            "backends": list(FORMAT_BACKENDS[fmt]),
            "input": "field", "input_shape": "(3, H, W) float32 RGB in [0, 1], one field per call; H and W free",
            "resize": "longer side to input_size, bilinear (bench.detection.fields.field_tensor); divide the boxes "
                      "by the same scale to get the field's own pixels",
            "outputs": {"boxes": "(n, 4) x0, y0, x1, y1 in the resized field's pixels",
                        "labels": "(n,) 1-based index into labels", "scores": "(n,)"},
            "model": det.model_name, "labels": det.labels, "input_size": det.input_size,
            "score_thresholds": det.score_thresholds, "threshold_source": det.threshold_source,
            "max_detections": det.max_detections, "source": str(owner), "torch": torch.__version__, "check": check,
        }
        runs.write_json_atomic(work / "model.json", contract)
        copy_config(owner, work)
    return contract


def validation_fields(detector_path: Path) -> list[Path]:
    """The detector run's validation fields: its experiment's manifest (split val) under its data root."""
    import pandas as pd

    from bench.cascade.guards import experiment_manifest

    owner = Path(detector_path).parent
    root = Path(str(runs.read_json(owner / "metrics.json").get("data_root") or "")) \
        if (owner / "metrics.json").exists() else Path()
    try:
        manifest = pd.read_csv(experiment_manifest(detector_path), dtype=str, keep_default_na=False)
        files = [root / p for p in manifest.loc[manifest["split"] == "val", "path"]]
    except (OSError, ValueError, KeyError):
        files = []
    if not files or not all(f.is_file() for f in files[:CHECK_FIELDS]):
        raise ExportError(f"the detector run's validation fields are not readable under {root} (needed to check the "
                          "export against PyTorch); pass --check-images FOLDER with fields like them.")
    return files


def check_detector(model: torch.nn.Module, path: Path, fmt: str, fields: list[torch.Tensor],
                   thresholds: torch.Tensor) -> dict:
    """PyTorch's kept boxes against each runtime's, field by field; ExportError naming the first field that differs."""
    with torch.inference_mode():
        want = [_kept(model.eval()([f])[0], thresholds) for f in fields]
    per = {}
    for backend in runnable(fmt):
        runtime = ExportedDetector(path, backend)
        worst_box, worst_score, boxes = 0.0, 0.0, 0
        for i, (f, w) in enumerate(zip(fields, want)):
            g = _kept(runtime([f])[0], thresholds)
            box, score = _difference(w, g)
            if box is None or box > BOX_TOLERANCE or score > SCORE_TOLERANCE:
                what = (f"{len(w['scores'])} boxes kept by PyTorch, {len(g['scores'])} by {backend}" if box is None
                        else f"boxes differ by up to {box:.3g} px (allowed {BOX_TOLERANCE}), scores by {score:.2e}")
                raise ExportError(f"the {fmt} detector run by {backend} does not find PyTorch's boxes on validation "
                                  f"field {i + 1} of {len(fields)}: {what}. Nothing was written.")
            worst_box, worst_score, boxes = max(worst_box, box), max(worst_score, score), boxes + len(w["scores"])
        per[backend] = {"max_abs_box_diff_px": worst_box, "max_abs_score_diff": worst_score}
    return {"fields": len(fields), "boxes_compared": boxes, "backends": per}


def _kept(found: dict, thresholds: torch.Tensor) -> dict:
    keep = found["scores"] >= thresholds[found["labels"] - 1]
    return {k: found[k][keep].double().numpy() for k in ("boxes", "labels", "scores")}


def _difference(a: dict, b: dict) -> tuple[float | None, float]:
    """The largest box-coordinate and score differences of a one-to-one matching of the two sets of boxes
    (labels must agree: scipy's assignment on the coordinate distance); (None, inf) when their sizes differ."""
    from scipy.optimize import linear_sum_assignment

    if len(a["scores"]) != len(b["scores"]):
        return None, float("inf")
    if not len(a["scores"]):
        return 0.0, 0.0
    cost = np.abs(a["boxes"][:, None, :] - b["boxes"][None, :, :]).max(-1)
    cost = np.where(a["labels"][:, None] == b["labels"][None, :], cost, 1e9)
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].max()), float(np.abs(a["scores"][rows] - b["scores"][cols]).max())
