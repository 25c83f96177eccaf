"""best.pt and last.pt: what a run writes to resume and to predict, and how it reads them back."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch

from bench import runs
from bench.runs import disk_errors as write_errors

log = logging.getLogger("bench.train")


def save_checkpoint(path: Path, weights: dict, *, model_name, class_names, input_size, data_cfg,
                    durable: bool = True, **extra) -> None:
    """Weights plus what a predictor needs to use them (class order, input size, normalisation)."""
    write_errors.save_torch_atomic(path, {
        "model": weights, "model_name": model_name, "class_names": list(class_names),
        "input_size": int(input_size), "mean": list(data_cfg.mean), "std": list(data_cfg.std), **extra,
    }, durable=durable)


def save_last(path: Path, *, model, optimizer, scheduler, epoch: int, best_score: float, best_epoch: int,
              history: list, config_hash: str, amp) -> None:
    """The full state after an epoch, to resume from (written without fsync: an unreadable last.pt
    after a power cut only means starting over)."""
    write_errors.save_torch_atomic(path, {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": None,  # bf16 autocast needs no loss scaling
        "epoch": epoch, "best_score": best_score, "best_epoch": best_epoch, "history": history,
        "config_hash": config_hash, "rng": torch.get_rng_state(), "amp": amp,
    }, durable=False)


def read_last(run_dir: runs.RunDir, chash: str) -> dict | None:
    """last.pt of this config with best.pt's own record of the best epoch; None to start afresh."""
    if not run_dir.last_ckpt.exists():
        return None
    try:
        state = torch.load(run_dir.last_ckpt, map_location="cpu", weights_only=True)
        if state.get("config_hash") != chash:
            return None
        if "best_score" not in state and "best_val_acc" in state:  # written before trainer.select_by
            state["best_score"] = state["best_val_acc"]
        if state["best_epoch"] > 0:
            # best.pt is written just before last.pt, so after a kill between the two it can be
            # one checkpoint newer: its own epoch and score describe the weights it holds.
            best = torch.load(run_dir.best_ckpt, map_location="cpu", weights_only=True)
            state["best_epoch"] = int(best["epoch"])
            state["best_score"] = float(best.get("val_score", best.get("val_acc")))
        return state
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, pickle.UnpicklingError) as exc:
        # Truncated by a crash of the machine (per-epoch checkpoints are not fsynced): the
        # finished epochs are lost, not the sweep.
        log.warning("cannot resume %s (%s: %s); training it from the start", run_dir.root, type(exc).__name__, exc)
        return None


def rebuild_model(ckpt: dict) -> torch.nn.Module:
    """The network of a best.pt (a weights_only-loaded dict) with its weights, in eval mode: the
    registry's architecture, the head the run trained (an MLP head, no auxiliary head: from the
    tensors), and the input conversion its ImageNet start implied (``transform_input``)."""
    from bench.models import create_model, get_model_spec
    from bench.models.heads import match_state_dict

    name = str(ckpt["model_name"])
    if ckpt.get("task") == "detection":
        from bench.models.detection_zoo import match_detector_state_dict, set_max_detections

        # The size it resized fields to and its constructor options (proposal counts...) are
        # part of the network; best.pt records both.
        model = create_model(name, num_classes=len(ckpt["class_names"]), pretrained=False,
                             image_size=int(ckpt["input_size"]), detector_kwargs=dict(ckpt.get("detector_kwargs") or {}))
        match_detector_state_dict(model, ckpt["model"])
        model.load_state_dict(ckpt["model"])
        if ckpt.get("max_detections"):  # runs before model.max_detections kept torchvision's cap
            set_max_detections(model, ckpt["max_detections"])
        return model.eval()
    model = create_model(name, num_classes=len(ckpt["class_names"]), pretrained=False)
    if ckpt.get("pretrained", False) and get_model_spec(name).pretrained_transform_input:
        # torchvision sets transform_input=True only when it builds these with ImageNet weights;
        # the fine-tuned weights expect it.
        model.transform_input = True
    match_state_dict(model, name, ckpt["model"], head=ckpt.get("head"))  # the head / no aux head, as trained
    model.load_state_dict(ckpt["model"])
    return model.eval()
