"""``bench-benchmark --task export``: single-cell classifier images/s per backend on this machine,
PyTorch eager against the same network exported to ONNX and run by ONNX Runtime, at batch 1 (one cell as
it comes) and 32 (a field's cells), both on the CPU threads this process may use.

Each model is built with random weights (speed does not depend on them), exported as bench-export does,
checked to give the same logits (max |difference| recorded), then timed: the best of 3 windows of about
``--ceiling-window`` seconds each, after a warm-up, for each backend in turn.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .ceiling import time_best

BATCHES = (1, 32)


def measure_backends(name: str, *, image_size: int, window_s: float, num_classes: int = 8, seed: int = 0) -> list[dict]:
    import numpy as np
    import onnxruntime as ort
    import torch

    from bench.data.store import usable_cpus
    from bench.deploy import export_module
    from bench.models import create_model

    torch.manual_seed(seed)
    model = create_model(name, num_classes=num_classes, pretrained=False).eval()
    threads = usable_cpus()
    torch.set_num_threads(threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_module(model, torch.randn(2, 3, image_size, image_size).numpy(), path)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rows = []
    for batch in BATCHES:
        x = torch.randn(batch, 3, image_size, image_size)
        xn = x.numpy()
        with torch.inference_mode():
            diff = float(np.abs(model(x).numpy() - session.run(None, {"image": xn})[0]).max())

            def eager():
                model(x)

            t_torch = time_best(eager, device=torch.device("cpu"), warmup=3, repeats=3, window_s=window_s)
        t_ort = time_best(lambda: session.run(None, {"image": xn}), device=torch.device("cpu"), warmup=3, repeats=3,
                          window_s=window_s)
        rows.append({"model": name, "image_size": image_size, "batch": batch, "threads": threads,
                     "torch_img_s": round(batch / t_torch, 1), "onnxruntime_img_s": round(batch / t_ort, 1),
                     "onnxruntime_vs_torch": round(t_torch / t_ort, 2), "max_abs_logit_diff": diff})
    return rows


def run_export_benchmark(args, models: list[str]) -> int:
    import pandas as pd

    from bench.runs import write_csv_atomic, write_json_atomic

    from .common import environment

    import torch

    rows = [r for m in models for r in measure_backends(m, image_size=args.image_size, window_s=args.ceiling_window)]
    frame = pd.DataFrame(rows)
    name = args.name or f"export-{args.image_size}px"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(out / f"{name}.csv", frame)
    write_json_atomic(out / f"{name}.json", {"environment": environment(torch.device("cpu")), "rows": rows})
    print(frame.to_string(index=False))
    print(f"\nwrote {out / (name + '.csv')} and {out / (name + '.json')}")
    return 0
