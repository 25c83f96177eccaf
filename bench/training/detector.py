"""Fitting one detector run: the detection counterpart of :mod:`bench.training.classifier`, on the same run contract.

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
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from hydra.utils import instantiate

from bench import runs
from bench.config.recipe import protocol_deviations, recipe_of
from bench.detection.data import DetectionSet, read_detection_set
from bench.detection.fields import batches, check_splits, decode, split_detection_set
from bench.detection.metrics import (choose_thresholds, coco_ground_truth, coco_metrics, coco_results,
                                     count_error)
from bench.models import count_params, create_model, get_model_spec
from bench.models.detection_zoo import set_max_detections
from bench.runs.record import run_record
from bench.training.device import env_info, peak_memory_mb, resolve_device
from bench.training.loop import Progress, run_loop
from bench.training.progress import EpochProgress

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
    """What the epochs of one detector run share: data, network, optimiser: the loop's Task."""

    cfg: object
    dset: DetectionSet
    samples: dict  # split -> [(uint8 field, Boxes)]
    size: int
    device: torch.device
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    checkpoint_meta: dict  # what best.pt records to rebuild the detector
    per_step: bool = False  # warm-up scales the rate inside the epoch; the schedule steps per epoch
    select_by: str = "val_map"
    oom_retry: bool = False
    chash: str = ""

    def start(self) -> Progress:
        return Progress(amp=False)  # detectors train in fp32

    def resumed(self, state: dict, progress: Progress) -> None:
        progress.amp = False

    def epoch(self, epoch: int, progress: Progress) -> tuple[dict, float, None]:
        """One epoch of training, then validation mAP (at the detector's cap)."""
        cfg, tcfg = self.cfg, self.cfg.trainer
        tr = _train_epoch(self.model, self.samples["train"], self.dset.classes, cfg, epoch, self.optimizer, self.device)
        val_pred = predict(self.model, self.samples["val"], self.device, tcfg.eval_batch_size, tcfg.max_batches)
        val = coco_metrics(coco_ground_truth([im for _, im in self.samples["val"]][:len(val_pred)], self.dset.classes),
                           coco_results(val_pred), self.checkpoint_meta["max_detections"])
        row = {"train_loss": tr["loss"], "val_map": val["map"], "val_ap50": val["ap50"], "seconds": tr["seconds"],
               "train_img_s": tr["img_s"]}
        return row, val["map"], None

    def describe(self, epoch: int, row: dict) -> str:
        return (f"train loss {row['train_loss']:.4f} | val mAP {row['val_map']:.4f} AP50 {row['val_ap50']:.4f} | "
                f"{row['train_img_s']:.1f} img/s")

    def results(self, progress: Progress, run_dir: runs.RunDir) -> dict:
        results = evaluate_splits(self.model, self.samples, self.dset.classes, run_dir, self.device, self.cfg.trainer,
                                  self.checkpoint_meta["max_detections"])
        return detector_metrics(self, progress, results)

    def summary(self, metrics: dict) -> str:
        return (f"best epoch {metrics['best_epoch']}, val mAP {metrics['val']['map']:.4f}, test mAP "
                f"{metrics['test']['map']:.4f}, test count error {metrics['test']['count_error']:.3f}")


def fit_detector(cfg, run_dir: runs.RunDir, exp_dir: Path, chash: str, threads, tracker, *, grad_accum: int = 1,
                 oom_retry: bool = False) -> dict:
    """Train a detector, select by validation mAP, evaluate on test; write the run folder; return metrics."""
    threads.rebalance()
    session = prepare_detector(cfg, run_dir, exp_dir)
    session.oom_retry, session.chash = oom_retry, chash
    return run_loop(session, run_dir, chash, threads, tracker)


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
    return DetectorSession(cfg, dset, samples, size, device, model, optimizer, scheduler, checkpoint_meta=meta)


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


def detector_metrics(s: DetectorSession, progress: Progress, results: dict) -> dict:
    """metrics.json of a detector run: the shared record (bench.runs.record) and a detector's own keys."""
    cfg, tcfg = s.cfg, s.cfg.trainer
    family = get_model_spec(cfg.model.name).family
    weights = ("imagenet-backbone" if family == "ssd" else "coco") if cfg.model.pretrained else "scratch"
    warnings = results.pop("warnings")
    return run_record(
        experiment=cfg.experiment_name, model=cfg.model.name, seed=cfg.seed, task="detection",
        classes=s.dset.classes, epochs=tcfg.epochs, history=progress.history, best_epoch=progress.best_epoch,
        select_by="val_map", warnings=warnings, val=results.pop("val"), test=results.pop("test"),
        params_m=count_params(s.model), gflops=_gflops(s.model, s.size), input_size=s.size,
        trainable_params_m=count_params(s.model, trainable_only=True),
        eval_img_s=None, peak_mem_mb=peak_memory_mb(s.device),
        batch_size=tcfg.batch_size, grad_accum=1, oom_retry=s.oom_retry, amp=False, channels_last=False,
        precision="fp32", weights=weights,
        n_excluded=int(s.dset.report.counts.get("image(s) that do not decode, left out", 0)),
        data_root=str(s.dset.root), device=str(s.device), env=env_info(s.device), config_hash=s.chash,
        # vs. its experiment's recipe (cheuque2022_detector's); None without one (no published recipe)
        recipe=recipe_of(cfg), protocol_deviations=protocol_deviations(cfg, precision="fp32"),
        annotations={"counts": dict(s.dset.report.counts), "notes": s.dset.report.notes},
        **results,  # score_threshold, max_detections
    )


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
                from bench.training.engine import NonFiniteLossError

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
