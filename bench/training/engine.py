"""Training and evaluation loops: tensors in, numbers out. No files, no config parsing."""

from __future__ import annotations

import contextlib
import math
import time
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite: the run is failed, not silently continued."""


def split_outputs(outputs) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Main logits and auxiliary logits of a model's output.

    Inception v3 in train mode returns ``InceptionOutputs(logits, aux_logits)`` and
    GoogLeNet with aux heads ``GoogLeNetOutputs(logits, aux2, aux1)``; everything else
    returns a tensor.
    """
    if isinstance(outputs, torch.Tensor):
        return outputs, []
    main, *aux = tuple(outputs)
    return main, [a for a in aux if a is not None]


def compute_loss(outputs, targets, criterion, aux_weight: float = 0.0):
    """Cross-entropy of the main head plus ``aux_weight`` x each auxiliary head.

    Inception v3 is fine-tuned with loss = main + 0.4 * aux (torchvision's recipe).
    """
    logits, aux = split_outputs(outputs)
    loss = criterion(logits, targets)
    if aux_weight:
        for a in aux:
            loss = loss + aux_weight * criterion(a, targets)
    return loss, logits


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA or CPU; bf16 keeps fp32's range, so no GradScaler is needed."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_bf16_supported() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def merge_epoch_parts(parts: list[dict]) -> dict:
    """One epoch's result from ``train_one_epoch`` results over consecutive slices of it."""
    n = sum(p["n"] for p in parts)
    seconds = sum(p["seconds"] for p in parts)
    return {
        "loss": sum(p["loss"] * p["n"] for p in parts) / max(n, 1),
        "acc": sum(p["acc"] * p["n"] for p in parts) / max(n, 1),
        "n": n,
        "seconds": seconds,
        "img_s": n / seconds if seconds > 0 else float("nan"),
    }


def loss_class_weights(rule: str | None, train_labels: torch.Tensor, num_classes: int) -> torch.Tensor | None:
    """Per-class loss weights (``trainer.class_weights``): None, or ``balanced`` =
    scikit-learn's ``n_samples / (n_classes * count_c)`` over the training labels."""
    if rule is None:
        return None
    if rule != "balanced":
        raise ValueError(f"trainer.class_weights={rule!r} is not one of null, balanced.")
    from sklearn.utils.class_weight import compute_class_weight

    labels = train_labels.cpu().numpy()
    present = np.unique(labels)
    weights = np.ones(num_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return torch.as_tensor(weights, dtype=torch.float32)


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    criterion: Callable,
    *,
    device: torch.device,
    amp: bool = False,
    aux_weight: float = 0.0,
    grad_accum: int = 1,
    on_batch: Callable[[dict], None] | None = None,
    on_step: Callable[[], None] | None = None,
) -> dict:
    """One pass over ``batches``; returns mean loss, accuracy, image count, seconds, images/s.

    With ``grad_accum`` > 1 each batch is a micro-batch and the optimizer steps every
    ``grad_accum`` of them, so the effective batch is ``grad_accum`` x the micro-batch.
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    steps = 0
    start = time.perf_counter()
    for i, (x, y) in enumerate(batches):
        with autocast(device, amp):
            outputs = model(x)
            loss, logits = compute_loss(outputs, y, criterion, aux_weight)
        (loss / grad_accum).backward()
        if (i + 1) % grad_accum == 0:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            if on_step is not None:
                on_step()  # e.g. a learning-rate schedule that decays per iteration (Keras' decay)
        # Accumulate on the device; one host sync per epoch keeps the GPU queue full.
        loss_sum += loss.detach().double() * y.shape[0]
        correct += (logits.detach().argmax(1) == y).sum()
        n += y.shape[0]
        if on_batch is not None:
            on_batch({"loss": loss, "n": y.shape[0]})
    if n and (i + 1) % grad_accum:
        optimizer.step()  # a last partial accumulation still counts
        optimizer.zero_grad(set_to_none=True)
        if on_step is not None:
            on_step()
    _sync(device)
    seconds = time.perf_counter() - start
    mean_loss = float(loss_sum) / max(n, 1)
    if not math.isfinite(mean_loss):
        raise NonFiniteLossError(f"training loss is {mean_loss} (not finite)")
    return {
        "loss": mean_loss,
        "acc": float(correct) / max(n, 1),
        "n": n,
        "seconds": seconds,
        "img_s": n / seconds if seconds > 0 else float("nan"),
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    criterion: Callable,
    *,
    device: torch.device,
    amp: bool = False,
) -> dict:
    """Predict every batch in eval mode; returns loss, accuracy, labels, predictions,
    probabilities (N, C) as numpy, seconds and images/s."""
    model.eval()
    losses, probs, labels = [], [], []
    start = time.perf_counter()
    for x, y in batches:
        with autocast(device, amp):
            logits, _ = split_outputs(model(x))
        logits = logits.float()
        losses.append(criterion(logits, y).double() * y.shape[0])
        probs.append(torch.softmax(logits, dim=1))
        labels.append(y)
    _sync(device)
    seconds = time.perf_counter() - start
    if not labels:
        return {"loss": float("nan"), "acc": float("nan"), "n": 0, "labels": np.zeros(0, int),
                "preds": np.zeros(0, int), "probs": np.zeros((0, 0)), "seconds": seconds, "img_s": float("nan")}
    probs_np = torch.cat(probs).cpu().numpy().astype(np.float64)
    labels_np = torch.cat(labels).cpu().numpy()
    preds = probs_np.argmax(1)
    n = len(labels_np)
    return {
        "loss": float(torch.stack(losses).sum()) / n,
        "acc": float((preds == labels_np).mean()),
        "n": n,
        "labels": labels_np,
        "preds": preds,
        "probs": probs_np,
        "seconds": seconds,
        "img_s": n / seconds if seconds > 0 else float("nan"),
    }
