"""Decode once: every image decoded and resized a single time into a uint8 array.

Decoding JPEGs is the dominant cost for small models (the plain per-epoch PIL loop
decodes each image once per epoch per model). Here a split is a uint8 tensor of
shape (N, 3, S, S) built once and reused by every epoch; evaluation reads it as is
(the eval transform is only "resize the whole image", already done here) and
training augments whole batches of it on the device (``transforms.py``).

The decoded arrays are cached under ``paths.cache_dir`` keyed by the files' paths,
sizes and modification times and the image size, so every model of a sweep (and a
re-run) reads the cache instead of decoding again; a changed file or size gives a
new key and so a rebuild.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from bench.data.imagefolder import try_decode
from bench.runs import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

STORE_FORMAT = 2  # bump when the decoded bytes would change (resize rule, colour handling)


@dataclass
class SplitData:
    """One split held in memory: images uint8 (N, 3, S, S), labels int64 (N,), paths."""

    images: torch.Tensor
    labels: torch.Tensor
    paths: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def to(self, device) -> "SplitData":
        return SplitData(self.images.to(device), self.labels.to(device), self.paths)


def store_key(files: Sequence[Path], size: int) -> str:
    """Cache key from each file's path, byte size and mtime (ns) plus the image size."""
    h = hashlib.sha256(f"v{STORE_FORMAT}|{size}".encode())
    for f in files:
        st = os.stat(f)
        h.update(f"|{f}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def decode_all(files: Sequence[Path], size: int, *, workers: int = 0) -> tuple[np.ndarray, list[str | None]]:
    """Decode ``files`` to an (N, S, S, 3) uint8 array; failures give a zero image and a reason."""
    out = np.zeros((len(files), size, size, 3), dtype=np.uint8)
    reasons: list[str | None] = [None] * len(files)
    jobs = [(str(f), size) for f in files]
    # CPUs this process may use (a Slurm job gets a share of the node, not all of it).
    workers = workers or usable_cpus()
    if workers > 1 and len(files) >= 64:
        # Chunks of images per task keep inter-process overhead well under decode cost.
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = pool.map(try_decode, jobs, chunksize=max(8, len(jobs) // (workers * 8)))
            for i, (arr, reason) in enumerate(results):
                _put(out, reasons, i, arr, reason)
    else:
        for i, job in enumerate(jobs):
            _put(out, reasons, i, *try_decode(job))
    return out, reasons


def usable_cpus() -> int:
    """CPUs this process may use: a Slurm job or a taskset gets a share of the node, not all of it."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _put(out, reasons, i, arr, reason) -> None:
    if arr is None:
        reasons[i] = reason
    else:
        out[i] = arr


def load_or_decode(
    files: Sequence[Path], size: int, cache_dir: str | os.PathLike | None, *, workers: int = 0
) -> tuple[np.ndarray, list[str | None]]:
    """``decode_all`` through an on-disk cache (``None`` disables the cache)."""
    if cache_dir is None:
        return decode_all(files, size, workers=workers)
    key = store_key(files, size)
    folder = Path(cache_dir) / "stores"
    arr_path, meta_path = folder / f"{key}.npy", folder / f"{key}.json"
    if arr_path.exists() and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            # Memory-mapped: only the rows a split takes are read into memory (by to_split's
            # copy), so a sweep holds one copy of the images, not the file plus the splits.
            arr = np.load(arr_path, mmap_mode="r")
            if arr.shape == (len(files), size, size, 3):
                log.info("decoded-image store hit: %s", arr_path)
                return arr, meta["reasons"]
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache: rebuild below
    arr, reasons = decode_all(files, size, workers=workers)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(arr_path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, arr)  # straight to the file: no second copy in memory (2.6 GB for PBC at 224 px)
    # The metadata is written last: its presence means the array is complete (a truncated
    # array after a machine crash fails the shape check above and is decoded again).
    write_json_atomic(meta_path, {"size": size, "n": len(files), "reasons": reasons})
    return arr, reasons


def store_bytes(n_images: int, size: int) -> int:
    """Bytes of the decoded uint8 images of ``n_images`` at ``size`` x ``size`` px."""
    return n_images * 3 * size * size


def to_split(images_nhwc: np.ndarray, labels: Sequence[int], paths: Sequence[str]) -> SplitData:
    """Build a SplitData from NHWC uint8 images (channels-first for torch)."""
    images = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
    return SplitData(images, torch.as_tensor(np.asarray(labels), dtype=torch.long), list(paths))
