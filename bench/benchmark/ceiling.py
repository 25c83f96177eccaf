"""1. The model alone (the ceiling): train and eval images/s on random in-memory tensors."""

from __future__ import annotations

import time

from .common import _sync


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

    from bench.training.engine import autocast, compute_loss
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
