"""``bench-benchmark --task export``: how fast an exported model runs on this machine's CPU, per backend.

- Single-cell classifiers (``--models``): images/s at batch 1 (one cell as it comes) and 32 (a field's
  cells), PyTorch eager against the same network as TorchScript (run by PyTorch), as ONNX run by ONNX
  Runtime, and as OpenVINO's model (converted from the ONNX file, full precision).
- The smear chain's detector (``--detector-model``, unless ``--no-detector``): fields/s on ``--fields``
  synthetic fields of ``--field-size`` px, one field per call as the chain runs it, PyTorch eager against
  ONNX Runtime and OpenVINO.

Every model is built with random weights (speed does not depend on them; a random detector's head keeps
more boxes than a trained one, the same boxes for every backend), written as bench-export writes it,
its outputs compared with PyTorch's (max |difference| recorded), then timed: the best of 3 windows of
about ``--ceiling-window`` seconds each, after a warm-up, each backend in turn, with the runtimes'
default threads (all the CPUs this process may use), as bench-predict runs them. A backend that is not
installed is left out and said.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

from .ceiling import time_best

BATCHES = (1, 32)
DETECTOR = "fasterrcnn_mobilenet_v3_large_320_fpn"


def installed_backends() -> list[str]:
    """The export backends to time: torchscript always, ONNX Runtime and OpenVINO when installed."""
    return ["torchscript"] + [b for b in ("onnxruntime", "openvino") if importlib.util.find_spec(b) is not None]


def _timed(step, window_s: float) -> float:
    import torch

    return time_best(step, device=torch.device("cpu"), warmup=3, repeats=3, window_s=window_s)


def measure_classifier(name: str, *, image_size: int, window_s: float, num_classes: int = 8, seed: int = 0) -> list[dict]:
    import numpy as np
    import torch

    from bench.data.store import usable_cpus
    from bench.deploy.formats import write_classifier
    from bench.predict.runtimes import ExportedClassifier

    from bench.models import create_model

    torch.manual_seed(seed)
    model = create_model(name, num_classes=num_classes, pretrained=False).eval()
    threads = usable_cpus()
    torch.set_num_threads(threads)
    backends = installed_backends()
    example = torch.randn(2, 3, image_size, image_size).numpy()
    runtimes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            folder = Path(tmp) / backend
            folder.mkdir()
            fmt = {"torchscript": "torchscript", "onnxruntime": "onnx", "openvino": "openvino"}[backend]
            file = write_classifier(model, example, folder, fmt)
            runtimes[backend] = ExportedClassifier(folder / file, "torch" if backend == "torchscript" else backend)
    rows = []
    for batch in BATCHES:
        x = torch.randn(batch, 3, image_size, image_size)
        with torch.inference_mode():
            want = model(x).numpy()
            t_torch = _timed(lambda: model(x), window_s)
        row = {"model": name, "kind": "classifier", "size": image_size, "batch": batch, "threads": threads,
               "torch_per_s": round(batch / t_torch, 1)}
        for backend, runtime in runtimes.items():
            diff = float(np.abs(runtime(x).numpy() - want).max())
            t = _timed(lambda: runtime(x), window_s)
            row |= {f"{backend}_per_s": round(batch / t, 1), f"{backend}_vs_torch": round(t_torch / t, 2),
                    f"{backend}_max_abs_diff": diff}
        rows.append(row)
    return rows


def measure_detector(name: str, *, field_size: int, n_fields: int, window_s: float, seed: int = 0) -> dict:
    """Fields/s of a detector (per field: the network, box decoding and NMS), one field per call."""
    import numpy as np
    import torch

    from bench.data.store import usable_cpus
    from bench.deploy.formats import write_detector
    from bench.models.detection_zoo import build_detector
    from bench.predict.runtimes import ExportedDetector

    torch.manual_seed(seed)
    model = build_detector(name, 3, False, field_size).eval()
    threads = usable_cpus()
    torch.set_num_threads(threads)
    fields = [torch.rand(3, field_size, field_size) for _ in range(n_fields)]
    row = {"model": name, "kind": "detector", "size": field_size, "batch": 1, "threads": threads}
    with torch.inference_mode():
        want = [model([f])[0] for f in fields]
        t_torch = _timed(lambda: [model([f]) for f in fields], window_s) / n_fields
    row["torch_per_s"] = round(1 / t_torch, 2)
    with tempfile.TemporaryDirectory() as tmp:
        for backend in (b for b in installed_backends() if b != "torchscript"):
            folder = Path(tmp) / backend
            folder.mkdir()
            file = write_detector(model, fields[0], folder, "onnx" if backend == "onnxruntime" else "openvino")
            runtime = ExportedDetector(folder / file, backend)
            got = [runtime([f])[0] for f in fields]
            # The most confident box of each field: the same box whatever the order of near-equal scores below it.
            diff = max((float(np.abs(g["boxes"][0].numpy() - w["boxes"][0].numpy()).max())
                        for g, w in zip(got, want) if len(g["boxes"]) and len(w["boxes"])), default=0.0)
            t = _timed(lambda: [runtime([f]) for f in fields], window_s) / n_fields
            row |= {f"{backend}_per_s": round(1 / t, 2), f"{backend}_vs_torch": round(t_torch / t, 2),
                    f"{backend}_max_abs_diff": diff}
    return row


def run_export_benchmark(args, models: list[str]) -> int:
    import pandas as pd
    import torch

    from bench.runs import write_csv_atomic, write_json_atomic

    from .common import environment

    rows = [r for m in models for r in measure_classifier(m, image_size=args.image_size, window_s=args.ceiling_window)]
    if not getattr(args, "no_detector", False):
        rows.append(measure_detector(getattr(args, "detector_model", None) or DETECTOR, field_size=args.field_size,
                                     n_fields=max(1, min(args.fields, 8)), window_s=args.ceiling_window))
    frame = pd.DataFrame(rows)
    missing = [b for b in ("onnxruntime", "openvino") if b not in installed_backends()]
    name = args.name or f"export-{args.image_size}px"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(out / f"{name}.csv", frame)
    write_json_atomic(out / f"{name}.json", {"environment": environment(torch.device("cpu")), "rows": rows,
                                             "not_installed": missing})
    print(frame.to_string(index=False))
    if missing:
        print(f"\nnot measured (not installed): {', '.join(missing)}; pip install -e '.[deploy]'")
    print(f"\nwrote {out / (name + '.csv')} and {out / (name + '.json')}")
    return 0
