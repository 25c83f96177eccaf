"""``bench-benchmark``: how close the harness trains to each model's own speed limit, and
how it compares with the plain per-epoch loop of the published set-up, in one run.

Per model, all in the same run (so the same machine state):

1. **ceiling**: the model alone on random in-memory tensors, train (forward, backward,
   SGD step) and eval images/s, in fp32, fp32 + channels_last, bf16 autocast and
   bf16 + channels_last; the ceiling is the best of them.
2. **data pipeline alone** (shared by the models): decoding the files into the uint8
   store (images/s), the whole cold data preparation (``build_data``, seconds) and
   iterating the training ``BatchLoader`` with augmentation and no model (images/s).
3. **harness**: ``bench.training.run_training(cfg)`` on the real data with the harness's own
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
    bench-benchmark --task detection --epochs 2          (a detector and the smear-field chain)
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .ceiling import measure_ceiling
from .common import COLUMNS, MODES, POLLUTED, ForeignLoad, _log, environment, load_average, ratio
from .harness import compose_cfg, harness_overrides, run_harness
from .output import format_table, write_outputs
from .pipeline import measure_decode, measure_loader
from .reference import run_reference
from .sweep import run_sweep


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


def run_benchmark(args) -> int:
    """The whole benchmark of the parsed ``bench-benchmark`` arguments (:mod:`bench.cli.benchmark`)."""
    if args.task == "detection":
        from .detection import run_detection_benchmark

        return run_detection_benchmark(args)
    if args.task == "export":
        from .export import run_export_benchmark

        return run_export_benchmark(args, model_list(args.models))
    import logging

    logging.basicConfig(level=logging.WARNING)
    b = setup(args)
    data = measure_data(args, b)
    # Phase 1, per model: the model alone, then the harness on the real data, back to back.
    rows = [measure_model(args, b, data, model) for model in b.models]
    # Phase 2: the reference loops, then at once the sweep, so that the two sides of the wall-time
    # comparison run minutes apart at most (this machine's speed drifts by ~10 % over longer spans).
    if not args.no_reference:
        for row in rows:
            measure_reference(args, b, data, row)
    sweep = None if args.no_sweep or args.no_reference else measure_sweep(args, b, rows)
    for row in rows:
        add_ratios(row, args, data.cfg0)
    b.env["load_average_end"] = load_average()
    csv_path, json_path = write_outputs(b.out_dir, b.name, rows, sweep, b.env)
    print(format_table(rows, sweep))
    print(f"\nwrote {csv_path} and {json_path}")
    if not args.keep_work:
        shutil.rmtree(b.work, ignore_errors=True)
    return 0


@dataclass
class Bench:
    """One benchmark run: its models and their sizes, the device, the output and scratch folders."""

    models: list[str]
    sizes: dict[str, int]
    device: object
    out_dir: Path
    name: str
    work: Path
    env: dict

    @property
    def results_dir(self) -> Path:
        return self.work / "results"

    @property
    def cache_dir(self) -> Path:
        return self.work / "cache"


@dataclass
class Data:
    """The prepared data every model's measurement shares."""

    cfg0: object  # the harness config of the first model
    bundle: object  # bench.data.build.DataBundle
    manifest: Path
    shared: dict  # the data pipeline's columns of every row


def setup(args) -> Bench:
    """The models, a fresh scratch folder, the environment record; a synthetic set is drawn as an
    image folder and then treated like any other."""
    from bench.training.device import resolve_device
    from bench.models import get_model_spec

    models = model_list(args.models)
    sizes = {m: get_model_spec(m).image_size(args.image_size) for m in models}
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
    if args.data == "synthetic":
        from bench.data.synthetic import synthetic_root

        args.root = synthetic_root(work / "datasets", n_per_class=args.synthetic_n_per_class,
                                   image_size=args.synthetic_size, seed=0)
    else:
        args.root = Path(args.data).expanduser().resolve()
    return Bench(models, sizes, device, out_dir, name, work, env)


def measure_data(args, b: Bench) -> Data:
    """The data pipeline alone, at the first model's size: decoding, the cold preparation, the loader."""
    from bench.data.build import build_data
    from bench.data.imagefolder import scan_imagefolder
    from bench.data.store import usable_cpus
    from bench.training.precision import resolve_precision

    cfg0 = compose_cfg(harness_overrides(args, b.models[0], results_dir=b.results_dir, cache_dir=b.cache_dir,
                                         experiment=b.name))
    records, _ = scan_imagefolder(args.root)
    files = [args.root / r.path for r in records]
    workers = cfg0.data.decode_workers or usable_cpus()
    exp_dir = b.results_dir / b.name
    size0 = b.sizes[b.models[0]]
    with ForeignLoad() as data_load:
        decode_img_s = measure_decode(files, size0, workers)
        t0 = time.perf_counter()
        bundle = build_data(cfg0.data, image_size=size0, exp_dir=exp_dir, cache_dir=str(b.cache_dir))
        data_prep_s = time.perf_counter() - t0
        _log(f"data: {bundle.summary()}; decode {decode_img_s:.0f} img/s, cold preparation {data_prep_s:.2f} s "
             f"({size0} px)")
        # The harness's own choice of channels_last: the rule bench.training.classifier.prepare applies.
        on_cuda = b.device.type == "cuda"
        loader_kw = {"batch_size": args.batch_size, "mean": cfg0.data.mean, "std": cfg0.data.std,
                     "augment_cfg": cfg0.data.augment, "device": b.device,
                     "channels_last": resolve_precision(cfg0.trainer, b.device)[1]}
        train_split = bundle.splits["train"].to(b.device) if on_cuda else bundle.splits["train"]
        loader_img_s = measure_loader(train_split, **loader_kw)
        loader_noaug_img_s = measure_loader(train_split, augment=False, **loader_kw)
        del train_split
        _log(f"loader alone: {loader_img_s:.0f} img/s with augmentation, {loader_noaug_img_s:.0f} without")
    b.env["foreign_cpu_data"] = data_load.value
    shared = {"batch_size": args.batch_size, "epochs": args.epochs, "device": str(b.device),
              "n_train": len(bundle.splits["train"]), "n_val": len(bundle.splits["val"]),
              "decode_img_s": decode_img_s, "data_prep_s": data_prep_s, "loader_img_s": loader_img_s,
              "loader_noaug_img_s": loader_noaug_img_s}
    return Data(cfg0, bundle, exp_dir / "manifest.csv", shared)


def measure_model(args, b: Bench, data: Data, model: str) -> dict:
    """One model's row: its ceiling in each precision mode, then the harness on the real data."""
    size = b.sizes[model]
    modes = [m for m in MODES if m[0] in args.ceiling_modes.split(",")]
    with ForeignLoad() as load:
        row = {c: float("nan") for c in COLUMNS}
        row.update(data.shared, model=model, image_size=size, ceil_train_mode="")
        if not args.no_ceiling:
            for mode, amp, cl in modes:
                c = measure_ceiling(model, num_classes=data.bundle.num_classes, image_size=size,
                                    batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
                                    device=b.device, amp=amp, channels_last=cl, window_s=args.ceiling_window,
                                    seed=args.seed)
                row[f"ceil_train_{mode}"], row[f"ceil_eval_{mode}"] = c["train"], c["eval"]
                _log(f"{model} alone, {mode}: train {c['train']:.0f} img/s, eval {c['eval']:.0f} img/s")
            best = max(modes, key=lambda m: row[f"ceil_train_{m[0]}"])[0]
            row["ceil_train_img_s"], row["ceil_train_mode"] = row[f"ceil_train_{best}"], best
            row["ceil_eval_img_s"] = max(row[f"ceil_eval_{m}"] for m, _, _ in modes)
        cfg = compose_cfg([*harness_overrides(args, model, results_dir=b.results_dir, cache_dir=b.cache_dir,
                                              experiment=b.name), "trainer.progress=false"])
        row.update(run_harness(cfg))
        _log(f"{model} harness: train {row['harness_train_img_s']:.0f} img/s (amp={row['harness_amp']}, "
             f"channels_last={row['harness_channels_last']}), val acc {row['harness_val_acc']:.3f}")
    row["foreign_cpu"] = load.value
    return row


def measure_reference(args, b: Bench, data: Data, row: dict) -> None:
    """The paper's plain loop for the row's model, in a process of its own."""
    cfg0, bundle = data.cfg0, data.bundle
    with ForeignLoad() as load:
        row.update(run_reference(args, row["model"], image_size=row["image_size"], manifest=data.manifest,
                                 classes=bundle.class_names, mean=list(cfg0.data.mean), std=list(cfg0.data.std),
                                 device=b.device, work=b.work))
    row["foreign_cpu"] = max(row["foreign_cpu"], load.value)
    _log(f"{row['model']} reference: train {row['ref_train_img_s']:.0f} img/s, val acc "
         f"{row['ref_val_acc']:.3f}, {row['ref_wall_s']:.1f} s")


def measure_sweep(args, b: Bench, rows: list[dict]) -> dict:
    """One bench-train -m for every model against the sum of the reference processes' wall times."""
    with ForeignLoad() as sweep_load:
        sweep = run_sweep(args, b.models, b.work)
    ref_total = sum(r["ref_wall_s"] for r in rows)
    sweep.update(ref_total_wall_s=ref_total, sweep_vs_ref=ratio(sweep["sweep_wall_s"], ref_total),
                 sweep_foreign_cpu=sweep_load.value)
    _log(f"sweep: {sweep['sweep_wall_s']:.1f} s vs reference {ref_total:.1f} s")
    if sweep_load.value > POLLUTED:
        _log(f"WARNING: other processes used {sweep_load.value:.2f} CPUs during the sweep: measure again")
    return sweep


def add_ratios(row: dict, args, cfg0) -> None:
    """The quotients the table is about, and the time the published protocol would take at these speeds."""
    split = list(cfg0.data.split_fractions)
    frac_train, frac_val = split[0] / sum(split), split[1] / sum(split)
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
