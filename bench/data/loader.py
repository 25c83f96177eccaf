"""Batches from an in-memory split: index, move, augment, normalise; no worker processes.

With the images already decoded into a uint8 tensor (on the device when it fits),
a batch is one gather; there is nothing for DataLoader workers to do, and nothing
to restart between epochs.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from bench.data.store import SplitData
from bench.data.transforms import BatchAugment, Normalize


def sampler_weights(rule: str, labels: torch.Tensor, num_classes: int) -> torch.Tensor | None:
    """Per-image drawing weights for ``trainer.sampler``: None (``shuffle``: every image once per
    epoch), or ``balanced``: 1 / (images of its class), so each class is drawn equally often."""
    if rule == "shuffle":
        return None
    if rule != "balanced":
        raise ValueError(f"trainer.sampler={rule!r} is not one of shuffle, balanced.")
    counts = torch.bincount(labels.cpu(), minlength=num_classes).double()
    return 1.0 / counts[labels.cpu()]


def balance_plan(labels: np.ndarray, num_classes: int, n: int, permutation: Callable[[int], np.ndarray]
                 ) -> np.ndarray:
    """Indices of the extra images that bring every class with fewer than ``n`` images up to
    ``n`` (``trainer.balance_to``, ``svm.balance_to``): each such class's images in the order
    ``permutation(count)`` gives, cycled, so every image is repeated ``(n - count) // count``
    or one more times. Larger classes get none (they are kept whole, never cut)."""
    extra = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if 0 < len(idx) < n:
            extra.append(np.resize(idx[permutation(len(idx))], n - len(idx)))
    return np.concatenate(extra) if extra else np.zeros(0, dtype=np.int64)


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for one epoch: depends only on (seed, epoch, stream), never on history."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch) * 7 + stream)
    return g


class BatchLoader:
    """Iterate (x, y) batches of a split, x float normalised on ``device``.

    ``shuffle`` draws a permutation per epoch and ``augment`` per-image flips and
    rotations, both from ``epoch_generator(seed, epoch)``; call ``set_epoch`` first.
    ``sample_weights`` (one per image) replaces the permutation by as many draws with
    replacement, image i with probability proportional to its weight (a balanced sampler).
    ``balance_to=N`` adds, each epoch, the extra draws of :func:`balance_plan` (every class
    with fewer than N images reaches N; the copies are augmented like any other draw) to the
    shuffled epoch.
    """

    def __init__(
        self,
        split: SplitData,
        batch_size: int,
        *,
        normalize: Normalize,
        device: torch.device,
        shuffle: bool = False,
        augment: BatchAugment | None = None,
        channels_last: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        max_batches: int | None = None,
        sample_weights: torch.Tensor | None = None,
        balance_to: int | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.split = split
        self.batch_size = batch_size
        self.normalize = normalize
        self.device = torch.device(device)
        self.shuffle = shuffle
        self.augment = augment
        self.channels_last = channels_last
        self.seed = seed
        self.drop_last = drop_last
        self.max_batches = max_batches
        self.sample_weights = sample_weights
        if sample_weights is not None and len(sample_weights) != len(split):
            raise ValueError(f"{len(sample_weights)} sample weights for {len(split)} images")
        if balance_to is not None and sample_weights is not None:
            raise ValueError("trainer.balance_to and trainer.sampler=balanced both balance the classes; use one.")
        self.balance_to = int(balance_to) if balance_to else None
        self._labels = split.labels.cpu().numpy() if self.balance_to else None
        self.size = len(split) + (len(self._extra(np.arange)) if self.balance_to else 0)  # draws per epoch
        self.epoch = 0

    def _extra(self, permutation: Callable[[int], np.ndarray]) -> np.ndarray:
        num_classes = int(self._labels.max()) + 1 if len(self._labels) else 0
        return balance_plan(self._labels, num_classes, self.balance_to, permutation)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = self.size
        batches = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        return min(batches, self.max_batches) if self.max_batches else batches

    def _order(self, generator: torch.Generator) -> torch.Tensor:
        n = len(self.split)
        if self.sample_weights is not None:
            return torch.multinomial(self.sample_weights, n, replacement=True, generator=generator)
        order = torch.arange(n)
        if self.balance_to:
            extra = self._extra(lambda k: torch.randperm(k, generator=generator).numpy())
            order = torch.cat([order, torch.from_numpy(extra).long()])
        return order[torch.randperm(len(order), generator=generator)] if self.shuffle else order

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order_gen = epoch_generator(self.seed, self.epoch, stream=0)
        aug_gen = epoch_generator(self.seed, self.epoch, stream=1)
        order = self._order(order_gen)
        images, labels = self.split.images, self.split.labels
        on_device = images.device == self.device
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            if on_device:
                idx = idx.to(self.device)
                x, y = images[idx], labels[idx]
            else:
                x, y = images[idx], labels[idx]
                if self.device.type == "cuda":
                    x, y = x.pin_memory(), y.pin_memory()
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            x = x.float()
            if self.augment is not None:
                x = self.augment(x, aug_gen)
            x = self.normalize(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y
