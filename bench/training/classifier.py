"""A classifier's part of a run: from a composed config to its predictions and metrics.json, through
the one loop (:mod:`bench.training.loop`), which owns epochs, the best epoch, checkpoints and resume.

The layer below :mod:`bench.training.run` (the run lifecycle and the OOM retry) and above
:mod:`bench.training.engine` (tensors in, numbers out)::

    fit(cfg, ...)                     the whole run: prepare, then run_loop(session, ...)
      prepare(cfg, ...)               data, model, optimizer, schedule, losses, loaders -> Session (the Task)
      Session.epoch(...)              train (the CPU precision trial first), validate; the scores of
                                      trainer.select_by
      Session.results(...)            best.pt on validation and test, predictions_{val,test}.csv, and the
                                      metrics.json record (bench.runs.record)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from hydra.utils import instantiate

from bench import runs
from bench.config.checks import check_config
from bench.config.recipe import protocol_deviations, recipe_of
from bench.data.build import build_data, geometry_of
from bench.data.loader import BatchLoader, sampler_weights
from bench.data.transforms import BatchAugment, Normalize
from bench.metrics import SELECT_BY, classification_metrics, collapse_warning, confidence_threshold
from bench.metrics.calibration import confidence_record, target_acc_of
from bench.models import count_gflops, count_params, create_model, get_model_spec
from bench.models.heads import configure_model, head_record
from bench.runs import files as run_files
from bench.runs.record import run_record
from bench.training.device import env_info, peak_memory_mb, resolve_device, to_device_if_fits
from bench.training.engine import evaluate, loss_class_weights, merge_epoch_parts, train_one_epoch
from bench.training.loop import Progress, run_loop
from bench.training.precision import (choose_cpu_precision, precision_record_key, read_precision_records,
                                      resolve_precision)
from bench.training.progress import EpochProgress

log = logging.getLogger("bench.train")


@dataclass
class Session:
    """Everything a classifier run trains and evaluates with, set up once: the loop's Task."""

    cfg: Any
    spec: Any
    device: torch.device
    image_size: int
    bundle: Any
    model: torch.nn.Module
    train_model: torch.nn.Module  # the model, or its torch.compile wrapper
    optimizer: torch.optim.Optimizer
    scheduler: Any
    per_step: bool  # the schedule steps after every optimizer step (trainer.sched_interval=step)
    train_criterion: Any
    criterion: Any
    splits: dict
    train_loader: BatchLoader
    eval_loader: Callable[[str], BatchLoader]
    amp: bool | None  # None: the CPU precision trial decides in the first epoch
    channels_last: bool
    grad_accum: int
    precision_cache: Path | None
    precision_key: str
    checkpoint_meta: dict
    params_m: float
    gflops: float
    oom_retry: bool = False
    chash: str = ""

    @property
    def select_by(self) -> str:
        return self.cfg.trainer.select_by

    def start(self) -> Progress:
        return Progress(amp=self.amp)

    def resumed(self, state: dict, progress: Progress) -> None:
        """A resumed run keeps the precision it started with."""
        if self.amp is None and progress.amp is None:
            records = read_precision_records(self.precision_cache)
            progress.amp = bool(records.get(self.precision_key, {}).get("amp", False))
        elif self.amp is not None:
            progress.amp = self.amp

    def epoch(self, epoch: int, progress: Progress) -> tuple[dict, float, dict]:
        tr, va = run_epoch(self, progress, epoch)
        n_classes = self.bundle.num_classes
        scores = {"val_acc": va["acc"],
                  "val_balanced_acc": SELECT_BY["val_balanced_acc"](va["labels"], va["preds"], n_classes),
                  "val_macro_f1": SELECT_BY["val_macro_f1"](va["labels"], va["preds"], n_classes)}
        row = {"train_loss": tr["loss"], "train_acc": tr["acc"], "val_loss": va["loss"], "val_acc": va["acc"],
               "val_balanced_acc": scores["val_balanced_acc"], "val_macro_f1": scores["val_macro_f1"],
               "seconds": tr["seconds"] + va["seconds"], "train_img_s": tr["img_s"]}
        return row, scores[self.cfg.trainer.select_by], va

    def describe(self, epoch: int, row: dict) -> str:
        return (f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | val loss {row['val_loss']:.4f} "
                f"acc {row['val_acc']:.4f} bal {row['val_balanced_acc']:.4f} | {row['train_img_s']:.0f} img/s")

    def results(self, progress: Progress, run_dir: runs.RunDir) -> dict:
        return run_metrics(self, progress, evaluate_best(self, progress, run_dir))

    def summary(self, metrics: dict) -> str:
        return (f"best epoch {metrics['best_epoch']}, val acc {metrics['val']['accuracy']:.4f}, "
                f"test acc {metrics['test']['accuracy']:.4f}")


# --------------------------------------------------------------------------- the run
def fit(cfg, run_dir: runs.RunDir, exp_dir: Path, chash: str, threads, tracker, *, grad_accum: int,
        oom_retry: bool = False) -> dict:
    """Train, select by validation, evaluate on test; write the run folder's files; return metrics."""
    check_config(cfg)  # the preflight said so already; a config that reaches here by the Python API too
    threads.rebalance()
    session = prepare(cfg, run_dir, exp_dir, grad_accum)
    session.oom_retry, session.chash = oom_retry, chash
    return run_loop(session, run_dir, chash, threads, tracker)


def prepare(cfg, run_dir: runs.RunDir, exp_dir: Path, grad_accum: int) -> Session:
    """Data, model, optimizer, schedule, losses and loaders of a run."""
    tcfg = cfg.trainer
    device = resolve_device(tcfg.device)
    amp, channels_last = resolve_precision(tcfg, device)  # amp None: a timed trial decides (CPU)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
        torch.cuda.reset_peak_memory_stats(device)
    spec = get_model_spec(cfg.model.name)
    image_size = resolve_image_size(cfg, spec)
    bundle = build_data(cfg.data, image_size=image_size, exp_dir=exp_dir, cache_dir=cfg.paths.cache_dir)
    log.info("data: %s", bundle.summary())
    runs.write_csv_atomic(run_dir.excluded, bundle.excluded)
    model = build_model(cfg, bundle.num_classes)
    params_m, gflops = count_params(model), count_gflops(model, image_size)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = instantiate(cfg.optim)(params=[p for p in model.parameters() if p.requires_grad])
    scheduler = instantiate(cfg.sched)(optimizer=optimizer)
    train_labels = bundle.splits["train"].labels.cpu()
    class_weight = loss_class_weights(tcfg.class_weights, train_labels, bundle.num_classes)
    # Training loss (optionally class-weighted); validation loss stays the plain, comparable one.
    train_criterion = torch.nn.CrossEntropyLoss(
        weight=None if class_weight is None else class_weight.to(device), label_smoothing=tcfg.label_smoothing)
    splits = bundle.splits
    if device.type != "cpu":
        splits = {k: to_device_if_fits(v, device) for k, v in splits.items()}
    norm = Normalize(cfg.data.mean, cfg.data.std, device=device)
    micro_batch = max(1, tcfg.batch_size // grad_accum)
    train_loader = BatchLoader(
        splits["train"], micro_batch, normalize=norm, device=device, shuffle=True,
        augment=BatchAugment.from_config(cfg.data.augment), channels_last=channels_last, seed=cfg.seed,
        max_batches=tcfg.max_batches, sample_weights=sampler_weights(tcfg.sampler, train_labels, bundle.num_classes),
        balance_to=tcfg.get("balance_to"))
    if train_loader.balance_to:
        log.info("trainer.balance_to=%d: %d training draws per epoch (%d images + augmented copies)",
                 train_loader.balance_to, train_loader.size, len(splits["train"]))

    def eval_loader(split: str) -> BatchLoader:
        return BatchLoader(splits[split], tcfg.eval_batch_size, normalize=norm, device=device,
                           channels_last=channels_last, max_batches=tcfg.max_batches)

    return Session(
        cfg=cfg, spec=spec, device=device, image_size=image_size, bundle=bundle, model=model,
        train_model=torch.compile(model) if tcfg.compile else model, optimizer=optimizer, scheduler=scheduler,
        per_step=tcfg.get("sched_interval", "epoch") == "step", train_criterion=train_criterion,
        criterion=torch.nn.CrossEntropyLoss(label_smoothing=tcfg.label_smoothing), splits=splits,
        train_loader=train_loader, eval_loader=eval_loader, amp=amp, channels_last=channels_last,
        grad_accum=grad_accum,
        precision_cache=Path(cfg.paths.cache_dir) / "cpu_precision.json" if cfg.paths.cache_dir else None,
        precision_key=precision_record_key(cfg.model.name, image_size, micro_batch, channels_last),
        checkpoint_meta=dict(model_name=cfg.model.name, class_names=bundle.class_names, input_size=image_size,
                             data_cfg=cfg.data, pretrained=bool(cfg.model.pretrained),
                             geometry=list(geometry_of(cfg.data)),  # bench-predict decodes new images alike
                             head=head_record(cfg.model),  # the head it trained, to rebuild it
                             stain=bundle.stain),  # the stain target new images are normalised to
        params_m=params_m, gflops=gflops)


def resolve_image_size(cfg, spec) -> int:
    """``data.image_size``, or the model's own input size when null; below the model's minimum is an error."""
    size = spec.image_size(cfg.data.image_size)
    if size < spec.min_train_size:
        raise ValueError(
            f"data.image_size={size} is below {cfg.model.name}'s minimum training input of "
            f"{spec.min_train_size} px; set data.image_size>={spec.min_train_size} or leave it null "
            f"for the model's own {spec.input_size} px.")
    return size


def build_model(cfg, num_classes: int) -> torch.nn.Module:
    """The configured network: registry build (weights), then head and freezing."""
    torch.manual_seed(cfg.seed)  # head initialisation (and whole net when not pretrained)
    model = create_model(cfg.model.name, num_classes=num_classes, pretrained=cfg.model.pretrained,
                         weights=cfg.model.weights, weights_tag=cfg.model.get("weights_tag"))
    return configure_model(model, cfg.model, num_classes=num_classes)


# --------------------------------------------------------------------------- epochs
def run_epoch(session: Session, progress: Progress, epoch: int) -> tuple[dict, dict]:
    """Train one epoch (the first of a fresh CPU run starts with the precision trial) and validate."""
    s, cfg = session, session.cfg
    s.train_loader.set_epoch(epoch)
    desc = f"{cfg.model.name} epoch {epoch + 1}/{cfg.trainer.epochs}"
    with EpochProgress(cfg.trainer.progress, len(s.train_loader), desc) as bar:
        batches, parts = s.train_loader, []
        if progress.amp is None:  # first epoch of a fresh run on a CPU with bf16 kernels
            batches = iter(s.train_loader)
            progress.amp, parts = choose_cpu_precision(
                s.train_model, batches, s.optimizer, s.train_criterion, device=s.device, aux_weight=s.spec.aux_weight,
                grad_accum=s.grad_accum, on_batch=bar.on_batch, record_path=s.precision_cache, key=s.precision_key,
                model_name=cfg.model.name)
        tr = train_one_epoch(s.train_model, batches, s.optimizer, s.train_criterion, device=s.device,
                             amp=progress.amp, aux_weight=s.spec.aux_weight, grad_accum=s.grad_accum,
                             on_batch=bar.on_batch, on_step=s.scheduler.step if s.per_step else None)
        if parts:
            tr = merge_epoch_parts([*parts, tr])
        va = evaluate(s.train_model, s.eval_loader("val"), s.criterion, device=s.device, amp=progress.amp)
        bar.done(tr, va)
    return tr, va


# --------------------------------------------------------------------------- the results
def evaluate_best(session: Session, progress: Progress, run_dir: runs.RunDir) -> dict[str, dict]:
    """best.pt's predictions (its weights are in the model) on validation and test, written as
    predictions_{val,test}.csv."""
    s = session
    progress.amp = bool(progress.amp)
    results = {}
    for split in ("val", "test"):
        if split == "val" and progress.best_val is not None:
            results[split] = progress.best_val  # same weights as best.pt: evaluating again would give the same
        else:
            results[split] = evaluate(s.model, s.eval_loader(split), s.criterion, device=s.device, amp=progress.amp)
        run_files.write_predictions(run_dir.predictions(split), s.splits[split].paths[: results[split]["n"]],
                                    results[split], s.bundle.class_names)
    return results


def run_metrics(session: Session, progress: Progress, results: dict) -> dict:
    """The metrics.json record of a finished classifier run."""
    s, cfg, bundle = session, session.cfg, session.bundle
    val, test = results["val"], results["test"]
    precision = "bf16" if progress.amp else "fp32"
    collapsed = collapse_warning(val["labels"], val["preds"], bundle.class_names)
    if collapsed:
        log.warning("%s seed %d: %s", cfg.model.name, cfg.seed, collapsed)
    return run_record(
        experiment=cfg.experiment_name, model=cfg.model.name, seed=cfg.seed, task="classification",
        classes=bundle.class_names, epochs=cfg.trainer.epochs, history=progress.history,
        best_epoch=progress.best_epoch, select_by=cfg.trainer.select_by,
        warnings=[*bundle.warnings, *([collapsed] if collapsed else [])],
        val=classification_metrics(val["labels"], val["preds"], bundle.class_names),
        test=classification_metrics(test["labels"], test["preds"], bundle.class_names),
        params_m=s.params_m, gflops=s.gflops, input_size=s.image_size,
        trainable_params_m=count_params(s.model, trainable_only=True),
        eval_img_s=test["img_s"], peak_mem_mb=peak_memory_mb(s.device),
        batch_size=cfg.trainer.batch_size, grad_accum=s.grad_accum, oom_retry=s.oom_retry, amp=progress.amp,
        channels_last=s.channels_last, precision=precision, weights=weights_used(cfg),
        # Left out entirely; files with identical bytes under two labels are listed in excluded.csv
        # too but train (they are only kept out of validation and test).
        n_excluded=bundle.n_left_out, data_root=bundle.root, device=str(s.device), env=env_info(s.device),
        config_hash=s.chash, recipe=recipe_of(cfg),
        # including what was decided at run time (precision)
        protocol_deviations=protocol_deviations(cfg, precision=precision),
        confidence_threshold=confidence_threshold(val["probs"].max(axis=1), val["preds"] == val["labels"]),
        # How far the probabilities can be trusted; temperature and referral threshold chosen on validation.
        calibration=confidence_record({s_: (r["probs"], r["labels"]) for s_, r in results.items()},
                                      target_acc_of(cfg)),
        input_geometry=geometry_text(geometry_of(cfg.data), s.image_size),
        n_train_only_duplicates=bundle.n_train_only,
        stain=bundle.stain,  # data.stain: method, target fitted on training images, images kept as decoded
        by_source=by_source(bundle, s.splits, results),
    )


def by_source(bundle, splits, results: dict) -> dict | None:
    """data=multi_source: validation and test metrics per source beside the pooled ones (None otherwise)."""
    if not bundle.sources:
        return None
    from bench.data.sources import source_metrics

    return {split: source_metrics(splits[split].paths[: r["n"]], r["labels"], r["preds"], bundle.class_names)
            for split, r in results.items()}


def geometry_text(geometry: tuple, size: int) -> str:
    """``resize to 224`` or ``resize shorter side to 256, centre crop 224``."""
    if geometry[0] == "resize":
        return f"resize to {size}"
    from bench.data.imagefolder import resize_crop_size

    return f"resize shorter side to {resize_crop_size(size, geometry[1])}, centre crop {size}"


def weights_used(cfg) -> str:
    """What the network started from: ``local:<path>``, the resolved ImageNet weights (e.g.
    ``IMAGENET1K_V1``; the latest if model.weights_tag is null), or ``scratch``."""
    if cfg.model.weights:
        return f"local:{cfg.model.weights}"
    if not cfg.model.pretrained:
        return "scratch"
    from bench.models.weights import resolved_weights_tag

    try:
        return resolved_weights_tag(cfg.model.name, cfg.model.get("weights_tag")) or "pretrained"
    except Exception:  # a custom model's own weights: nothing to resolve
        return "pretrained"
