"""A PyTorch network written in one of the export formats (``--format``):

- ``onnx``: classifiers through torch.onnx's ``dynamo=True`` path (torch.export), opset 18, the batch
  dimension dynamic. Detectors through the TorchScript-based exporter (``dynamo=False``, opset 17):
  torchvision's detection models are exported and tested that way upstream (their data-dependent
  control flow, NMS and box decoding, is traced for one field; height and width stay free).
- ``openvino``: the ONNX model read by OpenVINO's runtime (``Core.read_model``) and saved as
  model.xml + model.bin in full precision (OpenVINO would halve weights to fp16 by default, which the
  check against PyTorch would then have to tolerate).
- ``torchscript``: ``torch.jit.trace`` of a classifier on a validation batch: runs with PyTorch alone,
  without bench or timm to rebuild the network. Detectors are not written as TorchScript (tracing
  cannot hold their per-field number of boxes, and scripting torchvision's detectors gives a
  different output type); use onnx or openvino for them.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from bench.deploy.folders import ExportError
from bench.predict.runtimes import FORMAT_FILES, FORMATS

OPSET = 18
DETECTOR_OPSET = 17


def export_module(model: torch.nn.Module, example: np.ndarray, path: Path) -> None:
    """A classifier as ONNX: ``image`` (N, 3, S, S) in, ``logits`` out, N free."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval(), (torch.from_numpy(example),), str(path), input_names=["image"],
                              output_names=["logits"], dynamic_shapes=({0: batch},), dynamo=True, opset_version=OPSET,
                              verbose=False)
    except Exception as exc:
        raise ExportError(f"torch.onnx could not export this model ({type(exc).__name__}: {str(exc)[:300]}).") from exc


def write_classifier(model: torch.nn.Module, example: np.ndarray, folder: Path, fmt: str) -> str:
    """The classifier in ``folder`` as ``fmt``; the model file's name."""
    check_format(fmt)
    target = folder / FORMAT_FILES[fmt]
    if fmt == "torchscript":
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.jit.trace(model.eval(), torch.from_numpy(example), check_trace=False).save(str(target))
        except Exception as exc:
            raise ExportError(f"torch.jit.trace could not trace this model ({type(exc).__name__}: "
                              f"{str(exc)[:300]}); try --format onnx.") from exc
        return target.name
    onnx_path = folder / FORMAT_FILES["onnx"]
    export_module(model, example, onnx_path)
    if fmt == "openvino":
        to_openvino(onnx_path, target)
    return target.name


class _DetectorOutputs(torch.nn.Module):
    """torchvision's detector for one field, its dict flattened to (boxes, labels, scores) for the exporter."""

    def __init__(self, detector: torch.nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, field: torch.Tensor):
        found = self.detector([field])[0]
        return found["boxes"], found["labels"], found["scores"]


def write_detector(detector: torch.nn.Module, example: torch.Tensor, folder: Path, fmt: str) -> str:
    """The detector in ``folder`` as ``fmt`` (onnx or openvino): ``field`` (3, H, W) floats in [0, 1] in,
    ``boxes`` (n, 4) xyxy in its pixels, ``labels`` (n,) 1-based, ``scores`` (n,) out."""
    check_format(fmt)
    if fmt == "torchscript":
        raise ExportError("--format torchscript holds classifiers only: a detector's number of boxes changes from "
                          "field to field, which torch.jit.trace cannot hold. Export the detector with --format onnx "
                          "(ONNX Runtime, or OpenVINO reading it) or --format openvino.")
    onnx_path = folder / FORMAT_FILES["onnx"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_DetectorOutputs(detector.eval()).eval(), (example,), str(onnx_path), dynamo=False,
                              input_names=["field"], output_names=["boxes", "labels", "scores"],
                              dynamic_axes={"field": {1: "height", 2: "width"}, "boxes": {0: "n"},
                                            "labels": {0: "n"}, "scores": {0: "n"}},
                              opset_version=DETECTOR_OPSET)
    except Exception as exc:
        raise ExportError(f"torch.onnx could not export this detector ({type(exc).__name__}: "
                          f"{str(exc)[:300]}).") from exc
    if fmt == "openvino":
        target = folder / FORMAT_FILES["openvino"]
        to_openvino(onnx_path, target)
        return target.name
    return onnx_path.name


def to_openvino(onnx_path: Path, xml_path: Path) -> None:
    """model.xml + model.bin from an ONNX file (full precision); the ONNX file is removed. Read with the
    runtime's ONNX reader, not ``openvino.convert_model``: the converter sends usage telemetry unless told not
    to, from a forked process (which crashed in ld.so here, beside torch's threads), and a lab's export should
    not phone home."""
    try:
        import openvino as ov
    except ImportError as exc:
        raise ExportError("--format openvino needs the openvino package: pip install -e '.[deploy]'.") from exc
    try:
        ov.save_model(ov.Core().read_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)
    except Exception as exc:
        raise ExportError(f"OpenVINO could not convert the ONNX model ({type(exc).__name__}: {str(exc)[:300]}).") from exc
    onnx_path.unlink()


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}.")
