"""Fitting one run: from a composed config to its checkpoints, predictions and metrics.json.

The layer below :mod:`bench.training` and :mod:`bench.train` (which add the run lifecycle, the OOM retry and
the command line) and above :mod:`bench.engine` (tensors in, numbers out). One function per
stage, each with its reason to change::

    fit(cfg, ...)                  the whole run, in this order:
      prepare(cfg, ...)            data, model, optimizer, schedule, losses, loaders -> Session
      resume(session, ...)         the last checkpointed epoch of an interrupted run -> Progress
      run_epoch(session, ...)      one epoch: train (the CPU precision trial first) + validate
      record_epoch(session, ...)   history.csv, the tracker, the best epoch by trainer.select_by
      write_checkpoints(...)       best.pt then last.pt, at most every trainer.checkpoint_every_s
      evaluate_best(session, ...)  best.pt on validation and test, predictions_{val,test}.csv
      run_metrics(session, ...)    the metrics.json record

Rules that change numbers (and are tested as such, tests/test_training_rules.py): the best
epoch is the first with the highest validation score; test predictions come from best.pt;
the learning rate steps once per epoch (or per optimizer step with trainer.sched_interval=step);
a resumed run replays what an uninterrupted one would have done (per-epoch seeds, restored
optimizer and scheduler state).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from hydra.utils import instantiate

from bench import run_files, runs
from bench.checkpoints import read_last, save_checkpoint, save_last
from bench.config_checks import check_config
from bench.data.build import build_data, geometry_of
from bench.data.loader import BatchLoader, sampler_weights
from bench.data.transforms import BatchAugment, Normalize
from bench.device import env_info, peak_memory_mb, resolve_device, to_device_if_fits
from bench.engine import evaluate, loss_class_weights, merge_epoch_parts, train_one_epoch
from bench.metrics import SELECT_BY, classification_metrics, collapse_warning, confidence_threshold
from bench.models import count_gflops, count_params, create_model, get_model_spec
from bench.models.heads import configure_model, head_record
from bench.precision import choose_cpu_precision, precision_record_key, read_precision_records, resolve_precision
from bench.progress import EpochProgress
from bench.protocol import protocol_deviations, recipe_of

log = logging.getLogger("bench.train")


@dataclass
class Session:
    """Everything a run trains and evaluates with, set up once."""

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


@dataclass
class Progress:
    """Where the run stands: epochs done, their history, the best epoch so far."""

    next_epoch: int = 0
    history: list = field(default_factory=list)
    best_score: float = -1.0
    best_epoch: int = 0
    amp: bool | None = None
    best_val: dict | None = None  # the best epoch's validation result, when it ran in this process
    best_weights: dict | None = None  # its weights (a CPU copy) until written to best.pt
    last_write: float = field(default_factory=time.monotonic)
    epoch_lr: float | None = None  # the learning rate the current epoch started with


# --------------------------------------------------------------------------- the run
def fit(cfg, run_dir: runs.RunDir, exp_dir: Path, chash: str, threads, tracker, *, grad_accum: int,
        oom_retry: bool = False) -> dict:
    """Train, select by validation, evaluate on test; write the run folder's files; return metrics."""
    check_config(cfg)  # the preflight said so already; a config that reaches here by the Python API too
    threads.rebalance()
    session = prepare(cfg, run_dir, exp_dir, grad_accum)
    progress = resume(session, run_dir, chash)
    for epoch in range(progress.next_epoch, cfg.trainer.epochs):
        threads.rebalance()  # jobs that started or ended since: this job's share of the cores
        tr, va = run_epoch(session, progress, epoch)
        record_epoch(session, progress, epoch, tr, va, run_dir, tracker)
        write_checkpoints(session, progress, epoch, run_dir, chash)
    results = evaluate_best(session, progress, run_dir)
    metrics = run_metrics(session, progress, results, chash, oom_retry)
    run_files.write_metrics(run_dir.root, metrics)
    tracker.final(metrics)
    log.info("%s seed %d: best epoch %d, val acc %.4f, test acc %.4f -> %s", cfg.model.name, cfg.seed,
             progress.best_epoch, metrics["val"]["accuracy"], metrics["test"]["accuracy"], run_dir.root)
    return metrics


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
                             head=head_record(cfg.model)),  # the head it trained, to rebuild it
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
def resume(session: Session, run_dir: runs.RunDir, chash: str) -> Progress:
    """Restore the last checkpointed epoch of an interrupted run with the same config."""
    progress = Progress(amp=session.amp)
    state = read_last(run_dir, chash)
    if state is not None:
        session.model.load_state_dict(state["model"])
        session.optimizer.load_state_dict(state["optimizer"])
        session.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        log.info("resuming %s after epoch %d", run_dir.root, state["epoch"])
        progress = Progress(next_epoch=state["epoch"], history=list(state["history"]),
                            best_score=state["best_score"], best_epoch=state["best_epoch"], amp=state.get("amp"))
        if session.amp is None and progress.amp is None:  # a resumed run keeps the precision it started with
            records = read_precision_records(session.precision_cache)
            progress.amp = bool(records.get(session.precision_key, {}).get("amp", False))
        elif session.amp is not None:
            progress.amp = session.amp
    return progress


def run_epoch(session: Session, progress: Progress, epoch: int) -> tuple[dict, dict]:
    """Train one epoch (the first of a fresh CPU run starts with the precision trial) and validate."""
    s, cfg = session, session.cfg
    # Global RNG (dropout) seeded per epoch: a resumed epoch replays an uninterrupted one.
    torch.manual_seed(cfg.seed * 1_000_003 + epoch)
    s.train_loader.set_epoch(epoch)
    progress.epoch_lr = s.optimizer.param_groups[0]["lr"]
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


def record_epoch(session: Session, progress: Progress, epoch: int, tr: dict, va: dict, run_dir: runs.RunDir,
                 tracker) -> None:
    """history.csv and the tracker; the best epoch by trainer.select_by (a tie keeps the earlier)."""
    cfg, n_classes, lr = session.cfg, session.bundle.num_classes, progress.epoch_lr
    if not session.per_step:
        session.scheduler.step()  # once per epoch, after it
    scores = {"val_acc": va["acc"],
              "val_balanced_acc": SELECT_BY["val_balanced_acc"](va["labels"], va["preds"], n_classes),
              "val_macro_f1": SELECT_BY["val_macro_f1"](va["labels"], va["preds"], n_classes)}
    progress.history.append({
        "epoch": epoch + 1, "lr": lr, "train_loss": tr["loss"], "train_acc": tr["acc"], "val_loss": va["loss"],
        "val_acc": va["acc"], "val_balanced_acc": scores["val_balanced_acc"], "val_macro_f1": scores["val_macro_f1"],
        "seconds": tr["seconds"] + va["seconds"], "train_img_s": tr["img_s"]})
    tracker.epoch(epoch + 1, {k: float(v) for k, v in progress.history[-1].items() if k not in ("epoch", "seconds")})
    log.info("%s epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f bal %.4f | %.0f img/s",
             cfg.model.name, epoch + 1, cfg.trainer.epochs, tr["loss"], tr["acc"], va["loss"], va["acc"],
             scores["val_balanced_acc"], tr["img_s"])
    score = scores[cfg.trainer.select_by]
    if score > progress.best_score:  # strictly greater: a tie keeps the earlier epoch
        progress.best_score, progress.best_epoch, progress.best_val = score, epoch + 1, va
        model = getattr(session.model, "_orig_mod", session.model)  # torch.compile wraps the module
        progress.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    runs.write_csv_atomic(run_dir.history, pd.DataFrame(progress.history))


def write_checkpoints(session: Session, progress: Progress, epoch: int, run_dir: runs.RunDir, chash: str) -> None:
    """best.pt (when the best changed) then last.pt: after the last epoch, and otherwise at most every
    trainer.checkpoint_every_s (a 1 GB VGG checkpoint per 8 s GPU epoch would cost a quarter of the time)."""
    cfg = session.cfg
    final = epoch + 1 == cfg.trainer.epochs
    if not (final or time.monotonic() - progress.last_write >= cfg.trainer.checkpoint_every_s):
        return
    # best.pt first: on resume it is the record of the best epoch (see checkpoints.read_last).
    if progress.best_weights is not None:
        save_checkpoint(run_dir.best_ckpt, progress.best_weights, epoch=progress.best_epoch,
                        val_score=progress.best_score, select_by=cfg.trainer.select_by, durable=False,
                        **session.checkpoint_meta)
        progress.best_weights = None
    save_last(run_dir.last_ckpt, model=session.model, optimizer=session.optimizer, scheduler=session.scheduler,
              epoch=epoch + 1, best_score=progress.best_score, best_epoch=progress.best_epoch,
              history=progress.history, config_hash=chash, amp=progress.amp)
    progress.last_write = time.monotonic()


# --------------------------------------------------------------------------- the results
def evaluate_best(session: Session, progress: Progress, run_dir: runs.RunDir) -> dict[str, dict]:
    """best.pt's predictions on validation and test, written as predictions_{val,test}.csv."""
    s = session
    if not run_dir.best_ckpt.exists():
        raise RuntimeError("no epoch was trained (trainer.epochs=0?); nothing to evaluate")
    runs.fsync_file(run_dir.best_ckpt)  # durable before the run can be marked completed
    progress.amp = bool(progress.amp)
    s.model.load_state_dict(torch.load(run_dir.best_ckpt, map_location="cpu", weights_only=True)["model"])
    results = {}
    for split in ("val", "test"):
        if split == "val" and progress.best_val is not None:
            results[split] = progress.best_val  # same weights as best.pt: evaluating again would give the same
        else:
            results[split] = evaluate(s.model, s.eval_loader(split), s.criterion, device=s.device, amp=progress.amp)
        run_files.write_predictions(run_dir.predictions(split), s.splits[split].paths[: results[split]["n"]],
                               results[split], s.bundle.class_names)
    return results


def run_metrics(session: Session, progress: Progress, results: dict, chash: str, oom_retry: bool) -> dict:
    """The metrics.json record of a finished training run."""
    s, cfg, bundle = session, session.cfg, session.bundle
    val, test = results["val"], results["test"]
    precision = "bf16" if progress.amp else "fp32"
    collapsed = collapse_warning(val["labels"], val["preds"], bundle.class_names)
    if collapsed:
        log.warning("%s seed %d: %s", cfg.model.name, cfg.seed, collapsed)
    history = progress.history
    return {
        "experiment": cfg.experiment_name, "model": cfg.model.name, "seed": int(cfg.seed),
        "status": runs.STATUS_COMPLETED, "classes": bundle.class_names,
        "epochs": int(cfg.trainer.epochs), "epochs_run": len(history), "best_epoch": progress.best_epoch,
        "select_by": cfg.trainer.select_by, "warnings": [*bundle.warnings, *([collapsed] if collapsed else [])],
        "confidence_threshold": confidence_threshold(val["probs"].max(axis=1), val["preds"] == val["labels"]),
        "val": classification_metrics(val["labels"], val["preds"], bundle.class_names),
        "test": classification_metrics(test["labels"], test["preds"], bundle.class_names),
        "params_m": s.params_m, "gflops": s.gflops, "input_size": s.image_size,
        "input_geometry": geometry_text(geometry_of(cfg.data), s.image_size),
        "trainable_params_m": count_params(s.model, trainable_only=True),
        "train_time_s": sum(h["seconds"] for h in history),
        "train_img_s": _mean([h["train_img_s"] for h in history]),
        "eval_img_s": test["img_s"], "peak_mem_mb": peak_memory_mb(s.device),
        "batch_size": int(cfg.trainer.batch_size), "grad_accum": s.grad_accum, "oom_retry": oom_retry,
        "amp": progress.amp, "channels_last": s.channels_last, "precision": precision, "weights": weights_used(cfg),
        # Left out entirely; files with identical bytes under two labels are listed in excluded.csv
        # too but train (they are only kept out of validation and test).
        "n_excluded": bundle.n_left_out, "n_train_only_duplicates": bundle.n_train_only,
        "data_root": bundle.root, "device": str(s.device), "env": env_info(s.device), "config_hash": chash,
        # vs. the paper's recipe ([] = follows it), including what was decided at run time (precision)
        "protocol_deviations": protocol_deviations(cfg, precision=precision),
        "recipe": recipe_of(cfg),  # which paper's recipe those departures are from
    }


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


def _mean(values) -> float:
    values = [v for v in values if v == v]
    return sum(values) / len(values) if values else float("nan")
