"""``bench-benchmark``: how close the harness trains to each model's own speed limit, and
how it compares with the plain per-epoch loop of the published set-up, in one run.

Per model, all in the same run (so the same machine state):

1. **ceiling**: the model alone on random in-memory tensors, train (forward, backward,
   SGD step) and eval images/s, in fp32, fp32 + channels_last, bf16 autocast and
   bf16 + channels_last; the ceiling is the best of them.
2. **data pipeline alone** (shared by the models): decoding the files into the uint8
   store (images/s), the whole cold data preparation (``build_data``, seconds) and
   iterating the training ``BatchLoader`` with augmentation and no model (images/s).
3. **harness**: ``bench.train.train(cfg)`` on the real data with the harness's own
   defaults (``--set`` adds overrides); train images/s from its epochs, eval images/s,
   validation accuracy; the ratio to the ceiling.
4. **reference**: a plain loop as in the paper, in a subprocess of its own (start-up
   included): ``torchvision.datasets.ImageFolder`` on the same train/val files (the
   harness's manifest), PIL transforms every epoch, ``DataLoader`` with worker processes,
   fp32, SGD momentum 0.9 lr 1e-3; images/s, validation accuracy and wall time.
5. **sweep** (optional): the wall time of one ``bench-train -m`` command for all the
   models (fresh results and cache: start-up and data preparation included) against
   the sum of the reference processes' wall times.

Steps 1-3 run model by model; the reference loops and the sweep run last, back to back, so the
two sides of the wall-time comparison see the same machine. ``foreign_cpu`` (``others`` in the
table) is the CPU time other processes took meanwhile: above 0.25 the row is polluted.

Outputs ``<out>/<name>.csv`` (one row per model, plus a ``SWEEP`` row), ``<name>.json``
(environment: torch, threads, CPU model, load average before and after) and a printed
table. Harness and reference speeds are "steady": the fastest epoch after the first (the first
sets up kernels, and the reference's workers start every epoch anyway), the same best-of rule as
the ceiling's timing windows; ``_all`` columns are over every epoch.

    bench-benchmark --data ../shared/data/pbc-sample --image-size 64 --epochs 3 --name pbc64
    bench-benchmark --data synthetic --models simple_cnn --epochs 1 --no-sweep
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_MODELS = "squeezenet1_1,mobilenet_v2,resnet18"
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


# --------------------------------------------------------------------------- helpers
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
    from bench.precision import cpu_model

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
        self._t0, self._b0, self._o0 = time.perf_counter(), self._busy(), self._ours()
        return self

    def __exit__(self, *exc):
        b1 = self._busy()
        wall = time.perf_counter() - self._t0
        if b1 is not None and self._b0 is not None and wall > 0:
            self.value = max(0.0, (b1 - self._b0) - (self._ours() - self._o0)) / wall


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _log(msg: str) -> None:
    print(f"[bench-benchmark] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- 1. the model alone
def time_best(step, *, device, warmup: int, repeats: int, window_s: float, min_steps: int = 2) -> float:
    """Seconds per call of ``step``: warm up, size a window to about ``window_s``, and keep
    the fastest of ``repeats`` windows (the least disturbed by other load on the machine)."""
    t0 = time.perf_counter()
    for _ in range(max(warmup, 1)):
        step()
    _sync(device)
    per = (time.perf_counter() - t0) / max(warmup, 1)
    n = max(min_steps, int(window_s / max(per, 1e-6)))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def measure_ceiling(name: str, *, num_classes: int, image_size: int, batch_size: int, eval_batch_size: int,
                    device, amp: bool, channels_last: bool, warmup: int = 3, repeats: int = 3,
                    window_s: float = 1.0, seed: int = 0) -> dict:
    """Train and eval images/s of the model alone on random in-memory tensors."""
    import torch

    from bench.engine import autocast, compute_loss
    from bench.models import create_model, get_model_spec

    spec = get_model_spec(name)
    torch.manual_seed(seed)
    model = create_model(name, num_classes=num_classes, pretrained=False).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    criterion = torch.nn.CrossEntropyLoss()
    x = torch.randn(batch_size, 3, image_size, image_size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, num_classes, (batch_size,), device=device)
    xe = torch.randn(eval_batch_size, 3, image_size, image_size, device=device).contiguous(memory_format=fmt)

    def train_step():
        with autocast(device, amp):
            loss, _ = compute_loss(model(x), y, criterion, spec.aux_weight)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def eval_step():
        with torch.no_grad(), autocast(device, amp):
            model(xe)

    model.train()
    t_train = time_best(train_step, device=device, warmup=warmup, repeats=repeats, window_s=window_s)
    model.eval()
    t_eval = time_best(eval_step, device=device, warmup=max(1, warmup - 1), repeats=repeats, window_s=window_s)
    return {"train": batch_size / t_train, "eval": eval_batch_size / t_eval}


# --------------------------------------------------------------------------- 2. the data pipeline alone
def measure_decode(files: list[Path], image_size: int, workers: int) -> float:
    """Images/s of decoding and resizing ``files`` into the store (no cache)."""
    from bench.data.store import decode_all

    t0 = time.perf_counter()
    decode_all(files, image_size, workers=workers)
    return len(files) / (time.perf_counter() - t0)


def measure_loader(split, *, batch_size: int, mean, std, augment_cfg, device, channels_last: bool,
                   augment: bool = True, epochs: int = 2) -> float:
    """Images/s of iterating the harness's training BatchLoader with no model (best epoch)."""
    from bench.data.loader import BatchLoader
    from bench.data.transforms import BatchAugment, Normalize

    norm = Normalize(mean, std, device=device)
    aug = BatchAugment(augment_cfg.hflip, augment_cfg.vflip, augment_cfg.rotation, augment_cfg.interpolation) if augment else None
    loader = BatchLoader(split, batch_size, normalize=norm, device=device, shuffle=True, augment=aug,
                         channels_last=channels_last, seed=0)
    best = 0.0
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        n = 0
        t0 = time.perf_counter()
        for x, _ in loader:
            n += x.shape[0]
        _sync(device)
        best = max(best, n / (time.perf_counter() - t0))
    return best


# --------------------------------------------------------------------------- 3. the harness
def harness_overrides(args, model: str, *, results_dir: Path, cache_dir: Path, experiment: str) -> list[str]:
    """The bench-train overrides of the benchmark's harness runs (and of the sweep)."""
    return [
        "data=imagefolder",
        f"data.root={args.root}",
        f"data.image_size={args.image_size or 'null'}",  # null: each model's own input size
        f"model={model}",
        "model.pretrained=false",
        f"trainer.epochs={args.epochs}",
        f"trainer.batch_size={args.batch_size}",
        f"trainer.device={args.device}",
        f"paths.results_dir={results_dir}",
        f"paths.cache_dir={cache_dir}",
        f"experiment_name={experiment}",
        f"seed={args.seed}",
        *args.set,
    ]


def compose_cfg(overrides: list[str]):
    from bench.config import compose_config

    return compose_config(overrides)


def run_harness(cfg) -> dict:
    """``bench.train.train(cfg)`` and what its run folder says about speed and accuracy."""
    import pandas as pd

    from bench import runs
    from bench.train import train

    t0 = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - t0
    if result["status"] != runs.STATUS_COMPLETED:
        raise RuntimeError(f"harness run of {cfg.model.name} {result['status']}: {result.get('error')}")
    run_dir = runs.RunDir(Path(result["run_dir"]))
    history = pd.read_csv(run_dir.history)
    metrics = runs.read_json(run_dir.metrics)
    img_s = history["train_img_s"].tolist()
    return {
        "harness_amp": bool(metrics["amp"]),
        "harness_channels_last": bool(metrics["channels_last"]),
        "harness_train_img_s": steady(img_s),
        "harness_train_img_s_all": _overall(img_s),
        "harness_eval_img_s": float(metrics["eval_img_s"]),
        "harness_val_acc": float(history["val_acc"].iloc[-1]),
        "harness_val_acc_best": float(history["val_acc"].max()),
        "harness_wall_s": wall,
    }


def _overall(img_s: list[float]) -> float:
    """Images/s over all epochs of equal size: the harmonic mean of the per-epoch rates."""
    vals = [float(v) for v in img_s if not math.isnan(float(v)) and v > 0]
    return len(vals) / sum(1.0 / v for v in vals) if vals else float("nan")


# --------------------------------------------------------------------------- 4. the reference loop
def reference_datasets(root, manifest_path, image_size: int, mean, std):
    """The paper's data path: ImageFolder on the manifest's train and val files, PIL transforms
    applied per image per epoch (train: flips, rotation 60, resize; val: resize)."""
    import csv

    from torchvision import datasets
    from torchvision import transforms as T

    root = Path(root)
    with open(manifest_path, newline="", encoding="utf-8") as fh:
        manifest = list(csv.DictReader(fh))
    normalize = T.Normalize(list(mean), list(std))
    tfs = {
        "train": T.Compose([T.RandomHorizontalFlip(), T.RandomVerticalFlip(), T.RandomRotation(60),
                            T.Resize((image_size, image_size)), T.ToTensor(), normalize]),
        "val": T.Compose([T.Resize((image_size, image_size)), T.ToTensor(), normalize]),
    }
    out = {}
    for split, tf in tfs.items():
        keep = {row["path"] for row in manifest if row["split"] == split}

        def is_valid(path: str, keep=keep) -> bool:
            return Path(os.path.relpath(path, root)).as_posix() in keep

        out[split] = datasets.ImageFolder(str(root), transform=tf, is_valid_file=is_valid, allow_empty=True)
    return out


def relative_samples(dataset, root) -> list[str]:
    """The files an ImageFolder yields, relative to ``root`` with forward slashes."""
    return [Path(os.path.relpath(p, root)).as_posix() for p, _ in dataset.samples]


def reference_main(argv: list[str]) -> int:
    """The reference loop, run as its own process: ``python -m bench.benchmark _reference ...``."""
    p = argparse.ArgumentParser(prog="bench-benchmark _reference")
    p.add_argument("--root", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--classes", required=True, help="comma-separated class names the harness uses")
    p.add_argument("--image-size", type=int, required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mean", default="0.485,0.456,0.406")
    p.add_argument("--std", default="0.229,0.224,0.225")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)

    # Only what a plain training script imports (torch, torchvision) plus the model zoo, so
    # the reference's start-up is not inflated by the harness's own imports.
    import torch
    from torch.utils.data import DataLoader

    from bench.engine import split_outputs
    from bench.models import create_model, get_model_spec

    device = torch.device(a.device)
    mean, std = [float(v) for v in a.mean.split(",")], [float(v) for v in a.std.split(",")]
    ds = reference_datasets(a.root, a.manifest, a.image_size, mean, std)
    classes = a.classes.split(",")
    if ds["train"].classes != classes:
        raise SystemExit(f"ImageFolder classes {ds['train'].classes} differ from the harness's {classes}")
    train_dl = DataLoader(ds["train"], batch_size=a.batch_size, shuffle=True, num_workers=a.workers)
    val_dl = DataLoader(ds["val"], batch_size=a.batch_size, shuffle=False, num_workers=a.workers)
    torch.manual_seed(a.seed)
    model = create_model(a.model, num_classes=len(classes), pretrained=False).to(device)
    aux_weight = get_model_spec(a.model).aux_weight
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    epochs = []
    for _ in range(a.epochs):
        model.train()
        n, t0 = 0, time.perf_counter()
        for x, y in train_dl:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            logits, aux = split_outputs(model(x))
            loss = criterion(logits, y) + sum(aux_weight * criterion(o, y) for o in aux)
            loss.backward()
            optimizer.step()
            n += len(y)
        _sync(device)
        train_s = time.perf_counter() - t0
        model.eval()
        correct, total = 0, 0
        with torch.no_grad():
            for x, y in val_dl:
                pred = model(x.to(device)).argmax(1).cpu()
                correct += int((pred == y).sum())
                total += len(y)
        scheduler.step()
        epochs.append({"train_img_s": n / train_s, "train_s": train_s, "val_acc": correct / max(total, 1)})
    Path(a.out).write_text(json.dumps({"epochs": epochs, "n_train": len(ds["train"]), "n_val": len(ds["val"])}))
    return 0


def run_reference(args, model: str, *, image_size: int, manifest: Path, classes: list[str], mean, std, device,
                  work: Path) -> dict:
    """The reference loop in a process of its own; its wall time includes start-up."""
    out = work / f"reference-{model.replace('/', '--')}.json"
    cmd = [sys.executable, "-m", "bench.benchmark", "_reference", "--root", str(args.root),
           "--manifest", str(manifest), "--model", model, "--classes", ",".join(classes),
           "--mean", ",".join(map(str, mean)), "--std", ",".join(map(str, std)),
           "--image-size", str(image_size), "--epochs", str(args.epochs),
           "--batch-size", str(args.batch_size), "--workers", str(args.ref_workers),
           "--device", str(device), "--seed", str(args.seed), "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"reference loop of {model} failed:\n{proc.stderr[-3000:]}")
    rep = json.loads(out.read_text())
    img_s = [e["train_img_s"] for e in rep["epochs"]]
    accs = [e["val_acc"] for e in rep["epochs"]]
    return {
        "ref_workers": args.ref_workers,
        "ref_train_img_s": steady(img_s),
        "ref_train_img_s_all": _overall(img_s),
        "ref_val_acc": accs[-1],
        "ref_val_acc_best": max(accs),
        "ref_wall_s": wall,
    }


# --------------------------------------------------------------------------- 5. the sweep
def bench_train_command() -> list[str]:
    """``bench-train`` next to this interpreter, else the same entry point through ``-c``."""
    script = Path(sys.executable).with_name("bench-train")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from bench.train import cli; sys.exit(cli())"]


def run_sweep(args, models: list[str], work: Path) -> dict:
    """Wall time of one ``bench-train -m`` for all models: fresh results and cache, so start-up,
    decoding and the split are included, exactly as a user's first sweep."""
    from bench import runs

    results, cache = work / "sweep-results", work / "sweep-cache"
    for d in (results, cache):
        shutil.rmtree(d, ignore_errors=True)
    overrides = harness_overrides(args, ",".join(models), results_dir=results, cache_dir=cache,
                                  experiment="sweep")
    cmd = [*bench_train_command(), "-m", *overrides]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    (work / "sweep.log").write_text(" ".join(cmd) + "\n\n" + proc.stdout + "\n" + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"the sweep failed (see {work / 'sweep.log'}):\n{proc.stderr[-3000:]}")
    accs = {}
    for rd in runs.iter_run_dirs(results / "sweep"):
        m = runs.read_json(rd.metrics)
        accs[m["model"]] = m["val"]["accuracy"]
    return {"sweep_wall_s": wall, "sweep_val_acc": accs, "command": " ".join(cmd)}


# --------------------------------------------------------------------------- the whole run
def _image_size(text: str) -> int | None:
    if text in ("model", "native", "null", "0"):
        return None
    size = int(text)
    if size < 8:
        raise argparse.ArgumentTypeError(f"--image-size {size} is too small")
    return size


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench-benchmark", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="synthetic", help="an imagefolder (one sub-folder per class) or 'synthetic'")
    p.add_argument("--models", default=DEFAULT_MODELS,
                   help=f"comma-separated, or 'gavas2021' for the 27 of the paper (default {DEFAULT_MODELS})")
    p.add_argument("--image-size", type=_image_size, default=64,
                   help="pixels, or 'model' for each model's own input size (224; 299 for inception_v3)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--name", default=None, help="output name (default: <data>-<size>px)")
    p.add_argument("--out", default="results/benchmarks")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ref-workers", type=int, default=2, help="DataLoader workers of the reference loop")
    p.add_argument("--no-reference", action="store_true", help="skip the reference loop (and so the sweep)")
    p.add_argument("--no-sweep", action="store_true", help="skip the bench-train -m timing")
    p.add_argument("--no-ceiling", action="store_true", help="skip the model-alone measurements")
    p.add_argument("--ceiling-modes", default=",".join(m for m, _, _ in MODES),
                   help="model-alone modes to measure (fp32, fp32_cl, bf16, bf16_cl)")
    p.add_argument("--ceiling-window", type=float, default=1.0, help="seconds per timing window (best of 3)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra bench-train override for the harness runs and the sweep, e.g. trainer.amp=true")
    p.add_argument("--synthetic-n-per-class", type=int, default=60)
    p.add_argument("--synthetic-size", type=int, default=96)
    p.add_argument("--protocol-images", type=int, default=17092,
                   help="images of the full dataset for est_protocol_s (PBC: 17,092)")
    p.add_argument("--protocol-epochs", type=int, default=25)
    p.add_argument("--keep-work", action="store_true", help="keep the run folders and caches under <out>/<name>.work")
    args = p.parse_args(argv)
    modes = args.ceiling_modes.split(",")
    unknown = [m for m in modes if m not in {m for m, _, _ in MODES}]
    if unknown:
        p.error(f"--ceiling-modes: unknown {unknown}; choose from {[m for m, _, _ in MODES]}")
    return args


def model_list(text: str) -> list[str]:
    """``--models``: names, or ``gavas2021`` for the published sweep's 27 architectures."""
    if text.strip() == "gavas2021":
        from omegaconf import OmegaConf

        from bench.config import CONF_DIR

        exp = OmegaConf.load(Path(CONF_DIR) / "experiment" / "gavas2021.yaml")
        text = str(exp.hydra.sweeper.params.model)
    models = [m.strip() for m in text.split(",") if m.strip()]
    from bench.models import get_model_spec

    for m in models:
        get_model_spec(m)  # an unknown name fails here, before anything is measured
    return models


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["_reference"]:
        return reference_main(argv[1:])
    args = parse_args(argv)
    import logging

    from bench.data.build import build_data
    from bench.data.imagefolder import scan_imagefolder
    from bench.data.store import usable_cpus
    from bench.models import get_model_spec
    from bench.train import resolve_device

    logging.basicConfig(level=logging.WARNING)
    models = model_list(args.models)
    sizes = {m: args.image_size or get_model_spec(m).input_size for m in models}
    device = resolve_device(args.device)
    out_dir = Path(args.out)
    size_tag = f"{args.image_size}px" if args.image_size else "native"
    name = args.name or f"{'synthetic' if args.data == 'synthetic' else Path(args.data).name}-{size_tag}"
    work = out_dir / f"{name}.work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = environment(device)
    env["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    _log(f"{env['cpu']}, {env['usable_cpus']} CPUs, torch {env['torch']} ({env['torch_threads']} threads), "
         f"device {device}, load average {env['load_average_start']}")

    # -- the data: a synthetic set is generated as an imagefolder and then treated as one.
    if args.data == "synthetic":
        from bench.data.synthetic import synthetic_root

        args.root = synthetic_root(work / "datasets", n_per_class=args.synthetic_n_per_class,
                                   image_size=args.synthetic_size, seed=0)
    else:
        args.root = Path(args.data).expanduser().resolve()
    results_dir, cache_dir = work / "results", work / "cache"
    cfg0 = compose_cfg(harness_overrides(args, models[0], results_dir=results_dir, cache_dir=cache_dir,
                                         experiment=name))
    records, _ = scan_imagefolder(args.root)
    files = [args.root / r.path for r in records]
    workers = cfg0.data.decode_workers or usable_cpus()
    exp_dir = results_dir / name
    manifest = exp_dir / "manifest.csv"
    size0 = sizes[models[0]]  # the data pipeline is measured at the first model's size
    with ForeignLoad() as data_load:
        decode_img_s = measure_decode(files, size0, workers)
        t0 = time.perf_counter()
        bundle = build_data(cfg0.data, image_size=size0, exp_dir=exp_dir, cache_dir=str(cache_dir))
        data_prep_s = time.perf_counter() - t0
        _log(f"data: {bundle.summary()}; decode {decode_img_s:.0f} img/s, cold preparation {data_prep_s:.2f} s "
             f"({size0} px)")

        # The harness's own choice of channels_last, as _fit makes it.
        on_cuda = device.type == "cuda"
        cl_default = on_cuda if cfg0.trainer.channels_last is None else bool(cfg0.trainer.channels_last)
        loader_kw = {"batch_size": args.batch_size, "mean": cfg0.data.mean, "std": cfg0.data.std,
                     "augment_cfg": cfg0.data.augment, "device": device, "channels_last": cl_default}
        train_split = bundle.splits["train"].to(device) if on_cuda else bundle.splits["train"]
        loader_img_s = measure_loader(train_split, **loader_kw)
        loader_noaug_img_s = measure_loader(train_split, augment=False, **loader_kw)
        del train_split
        _log(f"loader alone: {loader_img_s:.0f} img/s with augmentation, {loader_noaug_img_s:.0f} without")
    env["foreign_cpu_data"] = data_load.value
    shared = {"batch_size": args.batch_size, "epochs": args.epochs, "device": str(device),
              "n_train": len(bundle.splits["train"]), "n_val": len(bundle.splits["val"]),
              "decode_img_s": decode_img_s, "data_prep_s": data_prep_s, "loader_img_s": loader_img_s,
              "loader_noaug_img_s": loader_noaug_img_s}

    modes = [m for m in MODES if m[0] in args.ceiling_modes.split(",")]
    split = list(cfg0.data.split_fractions)
    frac_train, frac_val = split[0] / sum(split), split[1] / sum(split)
    # Phase 1, per model: the model alone, then the harness on the real data, back to back.
    rows = []
    for model in models:
        size = sizes[model]
        with ForeignLoad() as load:
            row = {c: float("nan") for c in COLUMNS}
            row.update(shared, model=model, image_size=size, ceil_train_mode="")
            if not args.no_ceiling:
                for mode, amp, cl in modes:
                    c = measure_ceiling(model, num_classes=bundle.num_classes, image_size=size,
                                        batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
                                        device=device, amp=amp, channels_last=cl, window_s=args.ceiling_window,
                                        seed=args.seed)
                    row[f"ceil_train_{mode}"], row[f"ceil_eval_{mode}"] = c["train"], c["eval"]
                    _log(f"{model} alone, {mode}: train {c['train']:.0f} img/s, eval {c['eval']:.0f} img/s")
                best = max(modes, key=lambda m: row[f"ceil_train_{m[0]}"])[0]
                row["ceil_train_img_s"], row["ceil_train_mode"] = row[f"ceil_train_{best}"], best
                row["ceil_eval_img_s"] = max(row[f"ceil_eval_{m}"] for m, _, _ in modes)
            cfg = compose_cfg([*harness_overrides(args, model, results_dir=results_dir, cache_dir=cache_dir,
                                                  experiment=name), "trainer.progress=false"])
            row.update(run_harness(cfg))
            _log(f"{model} harness: train {row['harness_train_img_s']:.0f} img/s (amp={row['harness_amp']}, "
                 f"channels_last={row['harness_channels_last']}), val acc {row['harness_val_acc']:.3f}")
        row["foreign_cpu"] = load.value
        rows.append(row)

    # Phase 2: the reference loops, then at once the sweep, so that the two sides of the wall-time
    # comparison run minutes apart at most (this machine's speed drifts by ~10 % over longer spans).
    if not args.no_reference:
        for row in rows:
            with ForeignLoad() as load:
                row.update(run_reference(args, row["model"], image_size=row["image_size"], manifest=manifest,
                                         classes=bundle.class_names, mean=list(cfg0.data.mean),
                                         std=list(cfg0.data.std), device=device, work=work))
            row["foreign_cpu"] = max(row["foreign_cpu"], load.value)
            _log(f"{row['model']} reference: train {row['ref_train_img_s']:.0f} img/s, val acc "
                 f"{row['ref_val_acc']:.3f}, {row['ref_wall_s']:.1f} s")
    sweep = None
    if not (args.no_sweep or args.no_reference):
        with ForeignLoad() as sweep_load:
            sweep = run_sweep(args, models, work)
        ref_total = sum(r["ref_wall_s"] for r in rows)
        sweep.update(ref_total_wall_s=ref_total, sweep_vs_ref=ratio(sweep["sweep_wall_s"], ref_total),
                     sweep_foreign_cpu=sweep_load.value)
        _log(f"sweep: {sweep['sweep_wall_s']:.1f} s vs reference {ref_total:.1f} s")
        if sweep_load.value > POLLUTED:
            _log(f"WARNING: other processes used {sweep_load.value:.2f} CPUs during the sweep: measure again")

    for row in rows:
        row["harness_vs_ceiling"] = ratio(row["harness_train_img_s"], row["ceil_train_img_s"])
        row["harness_eval_vs_ceiling"] = ratio(row["harness_eval_img_s"], row["ceil_eval_img_s"])
        row["harness_vs_ref"] = ratio(row["harness_train_img_s"], row["ref_train_img_s"])
        row["val_acc_diff"] = row["harness_val_acc"] - row["ref_val_acc"]
        n = args.protocol_images
        row["est_protocol_s"] = args.protocol_epochs * (
            n * frac_train / row["harness_train_img_s"] + n * frac_val / row["harness_eval_img_s"])
        if row["foreign_cpu"] > POLLUTED:
            _log(f"WARNING: other processes used {row['foreign_cpu']:.2f} CPUs while {row['model']} was "
                 "measured: its numbers are polluted; measure again on an idle machine")

    env["load_average_end"] = load_average()
    csv_path, json_path = write_outputs(out_dir, name, rows, sweep, env)
    print(format_table(rows, sweep))
    print(f"\nwrote {csv_path} and {json_path}")
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


# --------------------------------------------------------------------------- outputs
def write_outputs(out_dir: Path, name: str, rows: list[dict], sweep: dict | None, env: dict):
    import pandas as pd

    from bench.runs import write_csv_atomic, write_json_atomic

    frame = pd.DataFrame(rows, columns=COLUMNS)
    for c in SWEEP_COLUMNS:
        frame[c] = float("nan")
    if sweep is not None:
        total = {c: float("nan") for c in frame.columns}
        total.update(model="SWEEP", sweep_wall_s=sweep["sweep_wall_s"], ref_total_wall_s=sweep["ref_total_wall_s"],
                     sweep_vs_ref=sweep["sweep_vs_ref"], sweep_foreign_cpu=sweep["sweep_foreign_cpu"],
                     sweep_val_acc=_mean(sweep["sweep_val_acc"].values()),
                     ref_val_acc=_mean(r["ref_val_acc"] for r in rows),
                     harness_val_acc=_mean(r["harness_val_acc"] for r in rows),
                     est_protocol_s=sum(r["est_protocol_s"] for r in rows))
        frame = pd.concat([frame, pd.DataFrame([total])], ignore_index=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out_dir / f"{name}.csv", out_dir / f"{name}.json"
    write_csv_atomic(csv_path, frame)
    write_json_atomic(json_path, {"environment": env, "sweep": sweep, "rows": rows})
    return csv_path, json_path


def _mean(values) -> float:
    vals = [float(v) for v in values if not math.isnan(float(v))]
    return sum(vals) / len(vals) if vals else float("nan")


def format_table(rows: list[dict], sweep: dict | None) -> str:
    def f(v, spec=".0f"):
        try:
            return "-" if math.isnan(v) else format(v, spec)
        except (TypeError, ValueError):
            return str(v)

    head = ["model", "ceiling", "mode", "harness", "h/ceil", "eval ceil", "h eval", "loader", "reference",
            "h/ref", "h val", "ref val", "ref wall s", "others"]
    body = [[r["model"], f(r["ceil_train_img_s"]), r["ceil_train_mode"] or "-", f(r["harness_train_img_s"]),
             f(r["harness_vs_ceiling"], ".2f"), f(r["ceil_eval_img_s"]), f(r["harness_eval_img_s"]),
             f(r["loader_img_s"]), f(r["ref_train_img_s"]), f(r["harness_vs_ref"], ".2f"),
             f(r["harness_val_acc"], ".3f"), f(r["ref_val_acc"], ".3f"), f(r["ref_wall_s"], ".1f"),
             f(r["foreign_cpu"], ".2f")] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(str(x).rjust(w) for x, w in zip(line, widths)) for line in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(0, "train/eval images/s (harness and reference: fastest epoch after the first); accuracy: "
                    "validation after the last epoch; others: CPUs used by other processes meanwhile (0 = clean)")
    if rows:
        r = rows[0]
        lines.append(f"data: decode {f(r['decode_img_s'])} img/s, cold preparation {f(r['data_prep_s'], '.2f')} s, "
                     f"loader alone {f(r['loader_img_s'])} img/s ({f(r['loader_noaug_img_s'])} without augmentation)")
    if sweep is not None:
        lines.append(f"sweep: bench-train -m {f(sweep['sweep_wall_s'], '.1f')} s vs reference loops "
                     f"{f(sweep['ref_total_wall_s'], '.1f')} s: ratio {f(sweep['sweep_vs_ref'], '.2f')} "
                     f"(val acc {', '.join(f'{k} {v:.3f}' for k, v in sweep['sweep_val_acc'].items())}; "
                     f"others {f(sweep['sweep_foreign_cpu'], '.2f')})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
