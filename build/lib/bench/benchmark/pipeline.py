"""2. The data pipeline alone: decoding into the store and iterating the training BatchLoader."""

from __future__ import annotations

import time
from pathlib import Path

from .common import _sync


def measure_decode(files: list[Path], image_size: int, workers: int) -> float:
    """Images/s of decoding and resizing ``files`` into the store (no cache)."""
    from bench.data.store import decode_all

    t0 = time.perf_counter()
    decode_all(files, image_size, workers=workers)
    return len(files) / (time.perf_counter() - t0)


def measure_loader(split, *, batch_size: int, mean, std, augment_cfg, device, channels_last: bool,
                   augment: bool = True, epochs: int = 2) -> float:
    """Images/s of iterating the harness's training BatchLoader with no model (best epoch)."""
    from bench.data.loader import BatchLoader
    from bench.data.transforms import BatchAugment, Normalize

    norm = Normalize(mean, std, device=device)
    aug = BatchAugment(augment_cfg.hflip, augment_cfg.vflip, augment_cfg.rotation, augment_cfg.interpolation) if augment else None
    loader = BatchLoader(split, batch_size, normalize=norm, device=device, shuffle=True, augment=aug,
                         channels_last=channels_last, seed=0)
    best = 0.0
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        n = 0
        t0 = time.perf_counter()
        for x, _ in loader:
            n += x.shape[0]
        _sync(device)
        best = max(best, n / (time.perf_counter() - t0))
    return best
