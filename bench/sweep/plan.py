"""``bench-sweep plan``: what each run of a sweep will cost, measured, and what to ask Slurm for.

Per architecture (and input size, batch, precision) a few training and evaluation steps on random
tensors on this machine's device (:func:`bench.benchmark.ceiling.measure_ceiling`, the benchmark's
"model alone"), with the peak memory: CUDA's peak allocation, or on the CPU the process's peak
resident size. Measurements are cached per machine and device under ``paths.cache_dir/plan/``, so a
second plan of the same sweep measures nothing. Run it where the jobs will run (``srun --gres=gpu:1
bench-sweep plan ...``): a login node's CPU says little about a GPU node.

Each run's time is its epochs x (training images / train img/s + validation images / eval img/s)
plus one pass over the test images; the array asks for the slowest run's time and the largest
memory, times ``SAFETY``, plus the decoded-image store. The model-alone speed is the ceiling of the
real one (no decoding, no augmentation, no checkpoints), which the safety factor covers. The result is
written to ``<experiment>/sweeps/plan.json``; ``bench-sweep submit`` uses its ``timeout_min`` and
``mem_gb`` unless the command line sets them.
"""

from __future__ import annotations

import json
import math
import resource
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import runs

SAFETY = 2.0  # the measured ceiling is faster than a real run; requeues cost a resumed epoch
MIN_TIMEOUT_MIN = 10
PLAN_JSON = "plan.json"


@dataclass
class RunCost:
    model: str
    seed: int
    image_size: int
    train_img_s: float
    eval_img_s: float
    peak_mem_gb: float
    hours: float


def _peak_gb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return kb / 2**20 if sys.platform != "darwin" else kb / 2**30


def measure(cfg, device, cache_dir) -> dict:
    """{train, eval, peak_mem_gb} of ``cfg``'s model at its input size and batch on ``device``, cached."""
    import torch

    from bench.benchmark.ceiling import measure_ceiling
    from bench.models import get_model_spec

    size = get_model_spec(cfg.model.name).image_size(cfg.data.image_size)
    amp = device.type == "cuda" and cfg.trainer.get("amp") is not False  # null: on for CUDA (as training)
    key = f"{socket.gethostname()}|{device}|{cfg.model.name}|{size}|{cfg.trainer.batch_size}|{amp}"
    path = Path(cache_dir or ".cache/bench") / "plan" / "measurements.json"
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        speed = measure_ceiling(cfg.model.name, num_classes=8, image_size=size, batch_size=cfg.trainer.batch_size,
                                eval_batch_size=cfg.trainer.eval_batch_size, device=device, amp=amp,
                                channels_last=False, warmup=2, repeats=2, window_s=0.5)
        cache[key] = {**speed, "peak_mem_gb": _peak_gb(device), "image_size": size}
        path.parent.mkdir(parents=True, exist_ok=True)
        runs.write_json_atomic(path, cache)
    return cache[key]


def run_cost(cfg, measured: dict, n_images: int) -> RunCost:
    f = [float(v) for v in cfg.data.split_fractions]
    n_train, n_val, n_test = (n_images * v / sum(f) for v in f)
    seconds = (cfg.trainer.epochs * (n_train / measured["train"] + n_val / measured["eval"])
               + n_test / measured["eval"])
    return RunCost(cfg.model.name, int(cfg.seed), int(measured["image_size"]), round(measured["train"], 1),
                   round(measured["eval"], 1), round(measured["peak_mem_gb"], 2), seconds / 3600)


def resources(costs: list[RunCost], n_images: int) -> dict:
    """What the array asks for: the slowest run's minutes and the largest memory, with the safety factor,
    plus the decoded-image store (held in memory by every task) at the largest input size."""
    from bench.data.store import memory_need

    store_gb = memory_need(n_images, max(c.image_size for c in costs)) / 2**30
    return {"timeout_min": int(math.ceil(max(c.hours for c in costs) * 60 * SAFETY)) + MIN_TIMEOUT_MIN,
            "mem_gb": int(math.ceil(max(c.peak_mem_gb for c in costs) * SAFETY + store_gb)) + 1}


def plan_sweep(tasks, n_images: int, device_name: str = "auto") -> tuple[list[RunCost], dict]:
    from bench.config import compose_config
    from bench.training.device import resolve_device

    device = resolve_device(device_name)
    costs = []
    for task in tasks:
        cfg = compose_config(task.overrides)
        costs.append(run_cost(cfg, measure(cfg, device, cfg.paths.cache_dir), n_images))
    return costs, {**resources(costs, n_images), "device": str(device), "host": socket.gethostname()}


def write_plan(exp_dir: Path, costs: list[RunCost], asks: dict) -> Path:
    path = Path(exp_dir) / "sweeps" / PLAN_JSON
    path.parent.mkdir(parents=True, exist_ok=True)
    runs.write_json_atomic(path, {"runs": [asdict(c) for c in costs], "resources": asks})
    return path


def planned_resources(exp_dir: Path) -> dict:
    """The resources of the experiment's last ``bench-sweep plan`` ({} without one)."""
    try:
        return dict(json.loads((Path(exp_dir) / "sweeps" / PLAN_JSON).read_text())["resources"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def format_plan(costs: list[RunCost], asks: dict) -> str:
    width = max(len(f"{c.model}/seed{c.seed}") for c in costs)
    lines = [f"{'run'.ljust(width)}  {'px':>4}  {'train img/s':>11}  {'eval img/s':>10}  {'peak GB':>7}  {'hours':>6}"]
    for c in costs:
        lines.append(f"{f'{c.model}/seed{c.seed}'.ljust(width)}  {c.image_size:>4}  {c.train_img_s:>11.1f}  "
                     f"{c.eval_img_s:>10.1f}  {c.peak_mem_gb:>7.2f}  {c.hours:>6.2f}")
    total = sum(c.hours for c in costs)
    lines.append(f"in all {total:.2f} hours of {asks['device']} on {asks['host']} (measured model alone: a ceiling; "
                 f"x{SAFETY:g} asked for)")
    lines.append(f"asks per task: hydra.launcher.timeout_min={asks['timeout_min']} hydra.launcher.mem_gb={asks['mem_gb']} "
                 "(bench-sweep submit uses these unless the command line sets them)")
    return "\n".join(lines)
