"""What every part of ``bench-benchmark`` shares: the CSV columns, the ratio and
steady-speed rules, the environment record, the foreign-load meter and logging."""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from pathlib import Path

# Model-alone precision modes: (column suffix, bf16 autocast, channels_last).
MODES = (("fp32", False, False), ("fp32_cl", False, True), ("bf16", True, False), ("bf16_cl", True, True))

COLUMNS = [
    "model", "image_size", "batch_size", "epochs", "device", "n_train", "n_val",
    # 1. the model alone
    *[f"ceil_train_{m}" for m, _, _ in MODES], "ceil_train_img_s", "ceil_train_mode",
    *[f"ceil_eval_{m}" for m, _, _ in MODES], "ceil_eval_img_s",
    # 2. the data pipeline alone (same for every model)
    "decode_img_s", "data_prep_s", "loader_img_s", "loader_noaug_img_s",
    # 3. the harness
    "harness_amp", "harness_channels_last", "harness_train_img_s", "harness_train_img_s_all",
    "harness_eval_img_s", "harness_val_acc", "harness_val_acc_best", "harness_wall_s",
    "harness_vs_ceiling", "harness_eval_vs_ceiling",
    # 4. the reference loop
    "ref_workers", "ref_train_img_s", "ref_train_img_s_all", "ref_val_acc", "ref_val_acc_best", "ref_wall_s",
    "harness_vs_ref", "val_acc_diff",
    # 5. estimate of the full published protocol at this speed (see --protocol-images)
    "est_protocol_s",
    # CPUs' worth of time other processes used while this row was measured (0 = clean)
    "foreign_cpu",
]
SWEEP_COLUMNS = ["sweep_wall_s", "ref_total_wall_s", "sweep_vs_ref", "sweep_val_acc", "sweep_foreign_cpu"]
POLLUTED = 0.25  # foreign_cpu above this: another job shared the CPUs; measure again


def ratio(a: float, b: float) -> float:
    """a / b, NaN when either is missing or b is zero (the CSV's ratios are exactly this)."""
    try:
        a, b = float(a), float(b)
    except (TypeError, ValueError):
        return float("nan")
    if not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return float("nan")
    return a / b


def steady(values: list[float]) -> float:
    """The fastest epoch after the first (warm-up: kernel set-up), or the single value when
    there is one epoch: the least disturbed epoch, as the ceiling keeps its fastest window.
    A short epoch (squeezenet1_1 on 616 images: 0.6 s) is easily slowed by anything else."""
    vals = [float(v) for v in values if not math.isnan(float(v))]
    if not vals:
        return float("nan")
    return max(vals[1:] if len(vals) > 1 else vals)


def _overall(img_s: list[float]) -> float:
    """Images/s over all epochs of equal size: the harmonic mean of the per-epoch rates."""
    vals = [float(v) for v in img_s if not math.isnan(float(v)) and v > 0]
    return len(vals) / sum(1.0 / v for v in vals) if vals else float("nan")


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(f for f in line.split(":", 1)[1].split() if "bf16" in f or f.startswith("amx"))
    except OSError:
        pass
    return []


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def environment(device) -> dict:
    import torch
    import torchvision

    from bench.data.store import usable_cpus
    from bench.training.precision import cpu_model

    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_bf16_flags": cpu_flags(),
        "usable_cpus": usable_cpus(),
        "torch_threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "load_average_start": load_average(),
    }


class ForeignLoad:
    """CPU time used by *other* processes while a block runs, in CPUs (0 = the machine was
    ours; 1 = another process kept one core busy). Read from /proc/stat minus this
    process's own CPU time and that of its finished children (reference loops, sweep)."""

    _clock = staticmethod(time.perf_counter)

    def __init__(self):
        self.value = float("nan")

    @staticmethod
    def _busy() -> float | None:
        try:
            fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _ours() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def __enter__(self):
        self._t0, self._b0, self._o0 = self._clock(), self._busy(), self._ours()
        return self

    def __exit__(self, *exc):
        b1 = self._busy()
        wall = self._clock() - self._t0
        if b1 is not None and self._b0 is not None and wall > 0:
            self.value = max(0.0, (b1 - self._b0) - (self._ours() - self._o0)) / wall


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _log(msg: str) -> None:
    print(f"[bench-benchmark] {msg}", file=sys.stderr, flush=True)
