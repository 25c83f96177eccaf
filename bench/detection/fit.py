"""Fitting one detector run: the detection counterpart of :mod:`bench.fit`, on the same run contract.

``bench-train model=<detector> data=<coco|voc|boxes_csv|synthetic_smear>`` reaches here through
:func:`bench.training.run_training` (the same lifecycle: skip, lock, failure rows, resume from
last.pt, atomic writes). Stages:

1. the dataset (:mod:`bench.detection.data`), split at image level (:mod:`bench.detection.fields`:
   stratified on the rarest class in each image, identical bytes kept together, written once as
   the experiment's manifest; an official VOC split is used as it is);
2. every image decoded once and resized so its longer side is ``data.image_size`` (boxes scaled
   with it, said in the log); the detector resizes nothing more; fields that do not decode are
   left out and listed in ``excluded.csv``;
3. epochs of SGD on batches of images with box-aware flips (``torchvision.transforms.v2`` and
   ``tv_tensors.BoundingBoxes``), validation mAP (pycocotools) after each; the best epoch by
   validation mAP is kept in best.pt;
4. best.pt on validation and test: COCO ground truth and results files, mAP / AP50 / AP75 /
   AR@100 / per-class AP, and the count error at the score threshold chosen on validation.

``model.max_detections`` caps the boxes the detector returns per field (torchvision's own cap is
100, fewer than the cells of a crowded smear) and is COCO's maxDets in the scoring; a field whose
predictions reach it is named (``metrics.json: warnings``): its count and recall may be cut short.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate

from bench import runs
from bench import run_files
from bench.checkpoints import read_last, save_checkpoint, save_last
from bench.device import env_info, peak_memory_mb, resolve_device
from bench.detection.data import DetectionSet, read_detection_set
from bench.detection.fields import batches, check_splits, decode, split_detection_set
from bench.detection.metrics import (choose_thresholds, coco_ground_truth, coco_metrics, coco_results,
                                     count_error)
from bench.models import count_params, create_model, get_model_spec
from bench.models.detection_zoo import set_max_detections
from bench.progress import EpochProgress
from bench.protocol import protocol_deviations, recipe_of

log = logging.getLogger("bench.train")


# --------------------------------------------------------------------------- options
def detector_kwargs(cfg) -> dict:
    """``model.detector_kwargs`` as plain containers (a best.pt is loaded with weights_only)."""
    from omegaconf import OmegaConf

    options = cfg.model.get("detector_kwargs") or {}
    return OmegaConf.to_container(options, resolve=True) if OmegaConf.is_config(options) else dict(options)


# --------------------------------------------------------------------------- the run
@dataclass
class DetectorSession:
    """What the epochs of one detector run share: data, network, optimiser and where they stand."""

    cfg: object
    dset: DetectionSet
    samples: dict  # split -> [(uint8 field, Boxes)]
    size: int
    device: torch.device
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    meta: dict  # what best.pt records to rebuild the detector
    history: list = field(default_factory=list)
    best_score: float = -1.0
    best_epoch: int = 0
    start: int = 0


def fit_detector(cfg, run_dir: runs.RunDir, exp_dir: Path, chash: str, threads, tracker, *, grad_accum: int = 1,
                 oom_retry: bool = False) -> dict:
    """Train a detector, select by validation mAP, evaluate on test; write the run folder; return metrics."""
    threads.rebalance()
    s = prepare_detector(cfg, run_dir, exp_dir)
    resume_detector(s, run_dir, chash)
    last_write = time.monotonic()
    for epoch in range(s.start, cfg.trainer.epochs):
        threads.rebalance()
        detector_epoch(s, epoch, run_dir, tracker)
        if epoch + 1 == cfg.trainer.epochs or time.monotonic() - last_write >= cfg.trainer.checkpoint_every_s:
            save_last(run_dir.last_ckpt, model=s.model, optimizer=s.optimizer, scheduler=s.scheduler, epoch=epoch + 1,
                      best_score=s.best_score, best_epoch=s.best_epoch, history=s.history, config_hash=chash,
                      amp=False)
            last_write = time.monotonic()
    if not run_dir.best_ckpt.exists():
        raise RuntimeError("no epoch was trained (trainer.epochs=0?); nothing to evaluate")
    runs.fsync_file(run_dir.best_ckpt)
    s.model.load_state_dict(torch.load(run_dir.best_ckpt, map_location="cpu", weights_only=True)["model"])
    results = evaluate_splits(s.model, s.samples, s.dset.classes, run_dir, s.device, cfg.trainer,
                              s.meta["max_detections"])
    metrics = detector_metrics(s, results, chash, oom_retry)
    run_files.write_metrics(run_dir.root, metrics)
    tracker.final({k: metrics[k] for k in ("val", "test")})
    log.info("%s seed %d: best epoch %d, val mAP %.4f, test mAP %.4f, test count error %.3f -> %s", cfg.model.name,
             cfg.seed, s.best_epoch, metrics["val"]["map"], metrics["test"]["map"], metrics["test"]["count_error"],
             run_dir.root)
    return metrics


def prepare_detector(cfg, run_dir: runs.RunDir, exp_dir: Path) -> DetectorSession:
    """The split fields decoded at the run's size, the annotation report, the detector and its optimiser."""
    device = resolve_device(cfg.trainer.device)
    spec = get_model_spec(cfg.model.name)
    dset = read_detection_set(cfg.data, cfg.paths.cache_dir)
    log.info("detection data: %d images, classes %s (%s)", len(dset.images), dset.classes,
             ", ".join(f"{c} {n}" for c, n in sorted(dset.class_counts().items())))
    splits = split_detection_set(dset, cfg, exp_dir)
    size = spec.image_size(cfg.data.image_size)
    samples, excluded = decode_splits(dset, splits, size, exp_dir)
    runs.write_csv_atomic(run_dir.excluded, pd.DataFrame(excluded, columns=["path", "reason"]))
    runs.write_json_atomic(run_dir.root / "annotation_report.json",
                           {"counts": dict(dset.report.counts), "examples": dset.report.examples,
                            "notes": dset.report.notes})
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model.name, num_classes=len(dset.classes), pretrained=cfg.model.pretrained,
                         image_size=size, detector_kwargs=detector_kwargs(cfg)).to(device)
    set_max_detections(model, cfg.model.max_detections)
    optimizer = instantiate(cfg.optim)(params=[p for p in model.parameters() if p.requires_grad])
    scheduler = instantiate(cfg.sched)(optimizer=optimizer)
    meta = dict(model_name=cfg.model.name, class_names=dset.classes, input_size=size, data_cfg=cfg.data,
                pretrained=bool(cfg.model.pretrained), task="detection", detector_kwargs=detector_kwargs(cfg),
                max_detections=int(cfg.model.max_detections))
    return DetectorSession(cfg, dset, samples, size, device, model, optimizer, scheduler, meta)


def decode_splits(dset: DetectionSet, splits: dict, size: int, exp_dir: Path) -> tuple[dict, list]:
    """Every split decoded at the run's size (fields that do not decode left out, returned as
    (path, reason)), checked again for empty splits, and the resizing said in the log."""
    excluded: list = []
    samples = {s: decode(dset, ims, size, excluded) for s, ims in splits.items()}
    check_splits({s: [im for _, im in v] for s, v in samples.items()},
                 {s: f"every field of it failed to decode (excluded.csv), split as in {exp_dir / 'manifest.csv'}"
                  for s in samples})
    largest = max((im for ims in splits.values() for im in ims), key=lambda im: max(im.width, im.height))
    if max(largest.width, largest.height) != size:
        scale = size / max(largest.width, largest.height)
        log.info("fields are resized so their longer side is data.image_size=%d px (%s: %d x %d -> %d x %d); "
                 "boxes with them", size, largest.path, largest.width, largest.height,
                 round(largest.width * scale), round(largest.height * scale))
    return samples, excluded


def resume_detector(s: DetectorSession, run_dir: runs.RunDir, chash: str) -> None:
    """Continue from last.pt when it belongs to this config: weights, momentum, schedule, RNG, history."""
    state = read_last(run_dir, chash)
    if state is None:
        return
    s.model.load_state_dict(state["model"])
    s.optimizer.load_state_dict(state["optimizer"])
    s.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    s.history, s.best_score, s.best_epoch, s.start = (list(state["history"]), state["best_score"],
                                                      state["best_epoch"], state["epoch"])
    log.info("resuming %s after epoch %d", run_dir.root, s.start)


def detector_epoch(s: DetectorSession, epoch: int, run_dir: runs.RunDir, tracker) -> None:
    """One epoch of training, validation mAP, history.csv, and best.pt when validation mAP improved."""
    cfg, tcfg = s.cfg, s.cfg.trainer
    torch.manual_seed(cfg.seed * 1_000_003 + epoch)
    lr = s.optimizer.param_groups[0]["lr"]
    tr = _train_epoch(s.model, s.samples["train"], s.dset.classes, cfg, epoch, s.optimizer, s.device)
    s.scheduler.step()
    val_pred = predict(s.model, s.samples["val"], s.device, tcfg.eval_batch_size, tcfg.max_batches)
    val = coco_metrics(coco_ground_truth([im for _, im in s.samples["val"]][:len(val_pred)], s.dset.classes),
                       coco_results(val_pred), s.meta["max_detections"])
    s.history.append({"epoch": epoch + 1, "lr": lr, "train_loss": tr["loss"], "val_map": val["map"],
                      "val_ap50": val["ap50"], "seconds": tr["seconds"], "train_img_s": tr["img_s"]})
    tracker.epoch(epoch + 1, {k: float(v) for k, v in s.history[-1].items() if k not in ("epoch", "seconds")})
    log.info("%s epoch %d/%d: train loss %.4f | val mAP %.4f AP50 %.4f | %.1f img/s", cfg.model.name, epoch + 1,
             tcfg.epochs, tr["loss"], val["map"], val["ap50"], tr["img_s"])
    runs.write_csv_atomic(run_dir.history, pd.DataFrame(s.history))
    if val["map"] > s.best_score:  # strictly greater: a tie keeps the earlier epoch
        s.best_score, s.best_epoch = val["map"], epoch + 1
        save_checkpoint(run_dir.best_ckpt, {k: v.detach().cpu() for k, v in s.model.state_dict().items()},
                        epoch=s.best_epoch, val_score=s.best_score, select_by="val_map", durable=False, **s.meta)


def detector_metrics(s: DetectorSession, results: dict, chash: str, oom_retry: bool) -> dict:
    """metrics.json of a detector run: its results and the facts a leaderboard row needs."""
    cfg, tcfg, history = s.cfg, s.cfg.trainer, s.history
    family = get_model_spec(cfg.model.name).family
    weights = ("imagenet-backbone" if family == "ssd" else "coco") if cfg.model.pretrained else "scratch"
    return {
        "experiment": cfg.experiment_name, "model": cfg.model.name, "seed": int(cfg.seed), "task": "detection",
        "status": runs.STATUS_COMPLETED, "classes": s.dset.classes, "epochs": int(tcfg.epochs),
        "epochs_run": len(history), "best_epoch": s.best_epoch, "select_by": "val_map", **results,
        "annotations": {"counts": dict(s.dset.report.counts), "notes": s.dset.report.notes},
        "params_m": count_params(s.model), "gflops": _gflops(s.model, s.size), "input_size": int(s.size),
        "trainable_params_m": count_params(s.model, trainable_only=True),
        "train_time_s": sum(h["seconds"] for h in history),
        "train_img_s": float(np.nanmean([h["train_img_s"] for h in history])) if history else None,
        "peak_mem_mb": peak_memory_mb(s.device), "batch_size": int(tcfg.batch_size), "oom_retry": oom_retry,
        "precision": "fp32", "weights": weights, "data_root": str(s.dset.root), "device": str(s.device),
        "env": env_info(s.device), "config_hash": chash, "recipe": recipe_of(cfg),
        # vs. its experiment's recipe (cheuque2022_detector's); None without one (no published recipe)
        "protocol_deviations": protocol_deviations(cfg, precision="fp32"),
        "n_excluded": int(s.dset.report.counts.get("image(s) that do not decode, left out", 0)),
    }


def _gflops(model, size: int) -> float | None:
    """GFLOPs of one evaluation forward pass on a blank field of the run's size (the heads' share
    depends on how many proposals a real field keeps; this is the fixed part plus the empty case)."""
    from bench.models.complexity import count_gflops

    try:
        return round(count_gflops(model, size), 3)
    except Exception as exc:  # a counter that cannot trace an op is no reason to lose the run
        log.warning("GFLOPs not counted (%s: %s)", type(exc).__name__, exc)
        return None


def _train_epoch(model, samples, classes, cfg, epoch: int, optimizer, device) -> dict:
    tcfg = cfg.trainer
    model.train()
    total, n, start = 0.0, 0, time.perf_counter()
    n_batches = -(-len(samples) // tcfg.batch_size)
    n_batches = min(n_batches, tcfg.max_batches or n_batches)
    warmup = int(tcfg.get("warmup_steps", 0) or 0)
    scheduled = [g["lr"] for g in optimizer.param_groups]  # this epoch's rates; warm-up scales them
    with EpochProgress(tcfg.progress, n_batches, f"{cfg.model.name} epoch {epoch + 1}/{tcfg.epochs}") as bar:
        for b, (images, targets) in enumerate(batches(samples, classes, tcfg.batch_size, shuffle=True, augment=True,
                                                      seed=cfg.seed, epoch=epoch, max_batches=tcfg.max_batches,
                                                      scale_jitter=cfg.data.get("scale_jitter"))):
            step = epoch * n_batches + b
            if step < warmup:  # linear from 1/warmup to 1, then the schedule's own rate
                for group, lr in zip(optimizer.param_groups, scheduled):
                    group["lr"] = lr * (step + 1) / warmup
            images = [im.to(device) for im in images]
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            loss = sum(model(images, targets).values())
            if not torch.isfinite(loss):
                from bench.engine import NonFiniteLossError

                raise NonFiniteLossError(f"training loss is {float(loss)} (not finite)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(images)
            n += len(images)
            bar.on_batch({"loss": loss.detach(), "n": len(images)})
    for group, lr in zip(optimizer.param_groups, scheduled):
        group["lr"] = lr  # the scheduler steps from the scheduled rate, not a warm-up fraction
    seconds = time.perf_counter() - start
    return {"loss": total / max(n, 1), "seconds": seconds, "img_s": n / seconds if seconds > 0 else float("nan")}


@torch.no_grad()
def predict(model, samples, device, batch_size: int, max_batches: int | None = None) -> list[dict]:
    """Per image: boxes (xyxy), labels (1..C) and scores, as numpy, in sample order."""
    model.eval()
    out = []
    for b, start in enumerate(range(0, len(samples), batch_size)):
        if max_batches and b >= max_batches:
            break
        images = [t.float().div(255.0).to(device) for t, _ in samples[start:start + batch_size]]
        for p in model(images):
            out.append({k: p[k].cpu().numpy() for k in ("boxes", "labels", "scores")})
    return out


def evaluate_splits(model, samples, classes, run_dir: runs.RunDir, device, tcfg, max_detections: int) -> dict:
    """best.pt on validation and test: COCO files, metrics (at most ``max_detections`` boxes per
    field, the detector's cap), the count error at the threshold chosen on validation, and the
    fields whose predictions reached the cap, named."""
    import json

    preds = {s: predict(model, samples[s], device, tcfg.eval_batch_size, tcfg.max_batches) for s in ("val", "test")}
    images = {s: [im for _, im in samples[s]][:len(preds[s])] for s in preds}
    threshold = choose_thresholds(images["val"], preds["val"], classes)  # per class, on validation only
    out = {"score_threshold": threshold, "max_detections": int(max_detections), "warnings": []}
    for split in ("val", "test"):
        gt, res = coco_ground_truth(images[split], classes), coco_results(preds[split])
        runs.write_text_atomic(run_dir.root / f"ground_truth_{split}.json", json.dumps(gt))
        runs.write_text_atomic(run_dir.root / f"predictions_{split}.json", json.dumps(res))
        counts = count_error(images[split], preds[split], classes, threshold)
        at_cap = [im.path for im, p in zip(images[split], preds[split]) if len(p["scores"]) >= max_detections]
        out[split] = {**coco_metrics(gt, res, max_detections), "n": len(images[split]), "count_error": counts["mean"],
                      "count_error_per_class": counts["per_class"], "fields_at_cap": at_cap}
        if at_cap:
            out["warnings"].append(
                f"{len(at_cap)} {split} field(s) reached the detector's cap of {max_detections} boxes "
                f"({', '.join(at_cap[:3])}{', ...' if len(at_cap) > 3 else ''}): their counts and recall may be cut "
                "short. Raise model.max_detections (a crowded field holds more cells than that).")
    for warning in out["warnings"]:
        log.warning("%s", warning)
    return out
