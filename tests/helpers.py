"""Plain helpers the tests share (fixtures are in conftest.py): the shrunk configs, and the folders,
run folders and command lines more than one test module writes. No test module imports another."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from bench import runs
from bench.config import compose_config
from bench.metrics import classification_metrics

# PBC's eight classes in the order bench lists them.
PBC_ORDER = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"]

# Small enough for seconds per run on 2 cores, big enough that every class reaches all splits.
SMOKE_OVERRIDES = [
    "trainer=cpu_smoke",
    "model=simple_cnn",
    "model.pretrained=false",
    "data.image_size=32",
    "data.synthetic_n_per_class=30",
    "data.synthetic_size=48",
    "data.decode_workers=1",
]

# A detector in seconds: Faster R-CNN (MobileNetV3 320) from scratch, 2 epochs on 16 synthetic fields
# of 96 px, labels platelet / rbc / wbc (experiment=detect_quickstart's label map).
SMALL_DETECTOR = ["experiment=detect_quickstart", "data.smear_n_fields=16", "data.smear_size=96",
                  "data.image_size=96", "trainer.epochs=2", "trainer.batch_size=4", "trainer.checkpoint_every_s=0",
                  "trainer.progress=false", "trainer.device=cpu"]


def compose_cfg(*overrides: str, return_hydra_config: bool = False):
    return compose_config(overrides, return_hydra_config=return_hydra_config)


def colour_folders(root: Path, counts: dict[str, int], size: int = 24, seed: int = 0) -> Path:
    """One folder per class, each class a different flat colour plus noise (easy to learn)."""
    rng = np.random.default_rng(seed)
    for k, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            base = np.array([(60 * k) % 256, (120 + 50 * k) % 256, (200 - 40 * k) % 256], dtype=float)
            img = np.clip(base + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{name}_{i:03d}.png")
    return root


def run_dir_of(out) -> runs.RunDir:
    """The RunDir of a run_training result."""
    return runs.RunDir(Path(out["run_dir"]))


def disk_with(free_bytes):
    """A stand-in for shutil.disk_usage that reports ``free_bytes`` free on every disk."""
    import shutil

    real = shutil.disk_usage

    def usage(path):
        u = real(path)
        return type(u)(u.total, u.total - free_bytes, free_bytes)

    return usage


def write_fields(folder: Path, names, size=(64, 48)) -> Path:
    """Random-noise fields of ``size`` (width, height) under the given file names."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / name)
    return folder


def write_coco_file(root: Path, images, annotations, categories=({"id": 1, "name": "wbc"},)) -> Path:
    """``root/instances.json`` from the COCO entries given."""
    path = root / "instances.json"
    path.write_text(json.dumps({"images": list(images), "annotations": list(annotations),
                                "categories": list(categories)}))
    return path


# The columns of a boxes CSV (data=boxes_csv).
BOX_COLUMNS = ["image", "xmin", "ymin", "xmax", "ymax", "label"]


def write_voc(root: Path, n: int, lists: dict[str, list[int]] | None = None, labels=None) -> Path:
    """A VOC folder of ``n`` 64 x 48 fields with one box each (label ``labels[i]``, default rbc) and
    the ImageSets/Main lists given (split -> field numbers)."""
    write_fields(root / "JPEGImages", [f"f{i}.png" for i in range(n)])
    (root / "Annotations").mkdir()
    for i in range(n):
        label = labels[i] if labels else "rbc"
        (root / "Annotations" / f"f{i}.xml").write_text(
            f"<annotation><filename>f{i}.png</filename><object><name>{label}</name><bndbox><xmin>{4 + i % 5}</xmin>"
            "<ymin>5</ymin><xmax>30</xmax><ymax>30</ymax></bndbox></object></annotation>")
    if lists:
        (root / "ImageSets" / "Main").mkdir(parents=True)
        for split, numbers in lists.items():
            (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"f{i}\n" for i in numbers))
    return root


def small_detector_cfg(tmp_path, cache_dir, *overrides):
    """SMALL_DETECTOR on 64 px fields, one epoch of one batch, under this test's tmp_path."""
    return compose_cfg(*SMALL_DETECTOR, "data.image_size=64", "trainer.epochs=1", "trainer.max_batches=1",
                       f"paths.results_dir={tmp_path / 'results'}", f"paths.cache_dir={cache_dir}", *overrides)


def chain_argv(folder, detector, classifiers, out, *extra):
    """bench-predict's command line for the smear chain: fields, a detector run, classifier runs (each
    ``RUN`` or ``LABEL=RUN``), quiet, on the CPU."""
    argv = [str(folder), "--detector", str(detector), "--out", str(out), "--device", "cpu", "--quiet",
            "--batch-size", "8", *extra]
    for c in classifiers:
        argv += ["--classifier", str(c)]
    return argv


def noise_folders(root, counts: dict[str, int], size=24, seed=0):
    """One folder per class of random-noise images (``counts``: class -> number of images)."""
    rng = np.random.default_rng(seed)
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"{cls}_{i:03d}.png")
    return root


def random_stack(rng, m, n, c, skill=1.5):
    """Probabilities of ``m`` members on ``n`` images of ``c`` classes, each member better than chance
    by a random margin up to ``skill``; and the labels."""
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(m, n, c))
    logits[:, np.arange(n), y] += rng.uniform(0.5, skill, size=(m, 1))
    p = np.exp(logits)
    return p / p.sum(axis=2, keepdims=True), y


def fake_run(exp: Path, model: str, seed: int, y: dict, pred: dict, *, gflops=1.0, train_time=10.0,
             classes=PBC_ORDER, epochs=3, **recorded) -> None:
    """A completed run folder as bench.cli.train writes it, from given labels and predictions per split;
    ``recorded``: more metrics.json keys (recipe, protocol_deviations)."""
    rd = runs.RunDir.for_run(exp, model, seed)
    metrics = {"experiment": exp.name, "model": model, "seed": seed, "status": "completed", "classes": classes,
               "params_m": gflops * 2, "gflops": gflops, "train_time_s": train_time, "epochs": epochs,
               "best_epoch": epochs, "data_root": "/data/PBC_dataset_normal_DIB", **recorded}
    for split in ("val", "test"):
        metrics[split] = classification_metrics(y[split], pred[split], classes)
        probs = np.full((len(y[split]), len(classes)), 0.01)
        probs[np.arange(len(y[split])), pred[split]] = 1 - 0.01 * (len(classes) - 1)
        paths = [f"{i:05d}/{classes[c]}.jpg" for i, c in enumerate(y[split])]  # sorted = index order
        frame = pd.DataFrame({"path": paths,
                              "label": [classes[c] for c in y[split]],
                              "predicted": [classes[c] for c in pred[split]]})
        for j, c in enumerate(classes):
            frame[f"prob_{c}"] = probs[:, j]
        runs.write_csv_atomic(rd.predictions(split), frame)
    hist = pd.DataFrame({"epoch": range(1, epochs + 1), "lr": 0.01, "train_loss": np.linspace(2, 0.5, epochs),
                         "train_acc": np.linspace(0.3, 0.9, epochs), "val_loss": np.linspace(2, 0.7, epochs),
                         "val_acc": np.linspace(0.3, metrics["val"]["accuracy"], epochs), "seconds": 1.0,
                         "train_img_s": 100.0})
    runs.write_csv_atomic(rd.history, hist)
    runs.write_json_atomic(rd.metrics, metrics)
    rd.write_status(runs.STATUS_COMPLETED, config_hash="0", model=model, seed=seed)


def cluster_state() -> str | None:
    """Why there is no cluster to test against (None: there is one)."""
    if not os.environ.get("SLURM_CONF"):
        return "no SLURM_CONF: run `make cluster-test`, which starts a local Slurm cluster"
    if not shutil.which("sinfo"):
        return "sinfo is not installed"
    done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    states = done.stdout.split()
    if done.returncode or not any(s in ("idle", "mixed", "allocated") for s in states):
        return f"the cluster of SLURM_CONF={os.environ['SLURM_CONF']} is not up (sinfo: {done.stderr.strip() or states})"
    return None


def bench_command(command: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``bench-<command> args`` from this environment in ``cwd``, which must exit 0 (its output otherwise)."""
    script = Path(sys.executable).with_name(f"bench-{command}")
    proc = subprocess.run([str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == 0, f"bench-{command} exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc
