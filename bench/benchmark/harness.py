"""3. The harness: ``bench.training.run_training(cfg)`` with the benchmark's overrides, and its run folder's
numbers."""

from __future__ import annotations

import time
from pathlib import Path

from .common import _overall, steady


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
    """``bench.training.run_training(cfg)`` and what its run folder says about speed and accuracy."""
    import pandas as pd

    from bench import runs

    from bench.runs import files as run_files
    from bench.training import run_training as train

    t0 = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - t0
    if result["status"] != runs.STATUS_COMPLETED:
        raise RuntimeError(f"harness run of {cfg.model.name} {result['status']}: {result.get('error')}")
    run_dir = runs.RunDir(Path(result["run_dir"]))
    history = pd.read_csv(run_dir.history)
    metrics = run_files.read_metrics(run_dir.root)
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
