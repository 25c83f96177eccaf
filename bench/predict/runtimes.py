"""The runtimes that run a bench-export folder: ONNX Runtime, OpenVINO or TorchScript (``--backend``).

An export folder's ``model.json`` names its ``format`` (onnx, openvino, torchscript), its ``kind``
(classifier or detector) and its ``file``. Which backend can run which format:

- ``onnx``: ONNX Runtime (its own default) or OpenVINO, which reads ONNX files directly;
- ``openvino``: OpenVINO (model.xml + model.bin);
- ``torchscript``: PyTorch (``torch.jit.load``), no bench code needed to rebuild the network;
- a run's ``best.pt``: PyTorch, eager.

Every runtime here runs on the CPU: exports are for the lab workstation without a GPU. A classifier
runtime takes a normalised float batch (N, 3, S, S) and gives logits; a detector runtime takes a list of
(3, H, W) float fields in [0, 1] and gives torchvision's list of ``{"boxes", "labels", "scores"}``.
"""

from __future__ import annotations

import contextlib
import ctypes
from pathlib import Path
from typing import Callable

import numpy as np
import torch

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
FORMATS = ("onnx", "openvino", "torchscript")
FORMAT_FILES = {"onnx": "model.onnx", "openvino": "model.xml", "torchscript": "model.pt"}
FORMAT_BACKENDS = {"onnx": ("onnxruntime", "openvino"), "openvino": ("openvino",), "torchscript": ("torch",)}
FORMAT_NAMES = {"onnx": "an ONNX", "openvino": "an OpenVINO", "torchscript": "a TorchScript"}


class RuntimeMismatch(ValueError):
    """A backend that cannot run this model: the message names the model, the backend and what can."""


def backend_for(fmt: str | None, backend: str | None, where: Path) -> str:
    """The backend that runs a model of format ``fmt`` (None: a best.pt) when ``backend`` is asked for
    (None or auto: the format's own); RuntimeMismatch naming the ones that can."""
    can = ("torch",) if fmt is None else FORMAT_BACKENDS.get(fmt)
    if can is None:
        raise RuntimeMismatch(f"{where}: model.json names format {fmt!r}, not one of {', '.join(FORMATS)}; export the "
                              "run again with bench-export.")
    if backend in (None, "auto"):
        return can[0]
    if backend not in can:
        what = "a best.pt (eager PyTorch)" if fmt is None else f"{FORMAT_NAMES[fmt]} export"
        hint = (" Export it first (bench-export RUN --format onnx|openvino|torchscript --out DIR) and pass that folder."
                if fmt is None else "")
        raise RuntimeMismatch(f"--backend {backend} cannot run {where}: it is {what}, which runs on "
                              f"{' or '.join(can)}.{hint}")
    return backend


def open_session(path: Path, backend: str) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """``run(inputs) -> outputs`` of one exported file on ``backend``, inputs and outputs in the export's order."""
    path = Path(path)
    try:
        if backend == "onnxruntime":
            import onnxruntime as ort

            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            names = [i.name for i in session.get_inputs()]
            return lambda inputs: session.run(None, dict(zip(names, inputs)))
        if backend == "openvino":
            import openvino as ov

            # Full precision: on CPUs with AMX or AVX-512 BF16 OpenVINO computes in bfloat16 by default,
            # which moves probabilities by up to 3e-2 (seen on this machine) and flips borderline cells.
            with kept_signal_stack():
                compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            request = compiled.create_infer_request()

            def run_ov(inputs):
                result = request.infer(list(inputs))
                return [np.asarray(result[o]) for o in compiled.outputs]

            return run_ov
        if backend == "torch":
            import warnings

            with warnings.catch_warnings():  # torch 2.14 marks torch.jit deprecated; it loads as ever
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(path), map_location="cpu").eval()

            def run_ts(inputs):
                with torch.inference_mode():
                    out = module(*(torch.from_numpy(np.asarray(i)) for i in inputs))
                return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]

            return run_ts
    except ImportError as exc:
        raise ImportError(f"{path} runs on {backend}, which is not installed (pip install -e '.[deploy]' brings "
                          f"onnx, onnxruntime and openvino).", name=exc.name) from exc
    raise RuntimeMismatch(f"unknown backend {backend!r}; one of {', '.join(BACKENDS[1:])}.")


class _SignalStack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextlib.contextmanager
def kept_signal_stack():
    """The calling thread's alternate signal stack as it was before the block. OpenVINO's ``compile_model``
    (2026.4, Linux) replaces it with a 20 KB region of its own that is later unmapped; CPython runs its
    signal handlers on that stack (SA_ONSTACK), so the next signal it handles (Ctrl-C's SIGINT, Slurm's
    SIGUSR2) then killed the process with SIGSEGV (seen in the test suite: a training run's SIGUSR2 after
    a chain on OpenVINO). Where libc has no sigaltstack (Windows) the block runs as it is."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        sigaltstack = libc.sigaltstack
    except (OSError, AttributeError, TypeError):
        yield
        return
    before = _SignalStack()
    saved = sigaltstack(None, ctypes.byref(before)) == 0
    try:
        yield
    finally:
        if saved:
            sigaltstack(ctypes.byref(before), None)


class ExportedClassifier:
    """An exported classifier behind the call bench-predict makes of a network: a normalised float batch
    in, logits out (as a CPU tensor, whatever device the batch came from)."""

    def __init__(self, path: Path, backend: str):
        self.backend = backend
        self.run = open_session(path, backend)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.run([np.ascontiguousarray(x.detach().cpu().float().numpy())])[0])


class ExportedDetector:
    """An exported detector behind torchvision's eval call: a list of (3, H, W) float fields in [0, 1] in,
    one ``{"boxes", "labels", "scores"}`` per field out. The export holds one field per call (its height and
    width are free), so fields go through one at a time."""

    def __init__(self, path: Path, backend: str):
        self.backend = backend
        self.run = open_session(path, backend)

    def __call__(self, fields) -> list[dict]:
        out = []
        for f in fields:
            boxes, labels, scores = self.run([np.ascontiguousarray(f.detach().cpu().float().numpy())])
            out.append({"boxes": torch.from_numpy(np.asarray(boxes, np.float32).reshape(-1, 4)),
                        "labels": torch.from_numpy(np.asarray(labels, np.int64).reshape(-1)),
                        "scores": torch.from_numpy(np.asarray(scores, np.float32).reshape(-1))})
        return out


def read_contract(folder: Path) -> dict:
    """model.json of an export folder (OSError/ValueError when unreadable)."""
    import json

    contract = json.loads((Path(folder) / "model.json").read_text())
    if not isinstance(contract, dict):
        raise ValueError("model.json does not hold an object")
    contract.setdefault("kind", "classifier")  # the first exports (ONNX classifiers) did not say
    contract.setdefault("format", "onnx")
    return contract


def is_export(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "model.json").is_file()
