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
from bench.runs import atomic_path, remove_stale_temporaries, write_json_atomic
from bench.config import STORE_MODES  # the choices, defined once

log = logging.getLogger(__name__)

STORE_FORMAT = 2  # bump when the decoded bytes would change (resize rule, colour handling)


@dataclass
class SplitData:
    """One split: images uint8 (N, 3, S, S), labels int64 (N,), paths. The images are a
    tensor in memory, or ``MappedImages`` read from the store file batch by batch."""

    images: "torch.Tensor | MappedImages"
    labels: torch.Tensor
    paths: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def to(self, device) -> "SplitData":
        if isinstance(self.images, MappedImages):
            return self  # read batch by batch from the store file; the loader moves each batch
        return SplitData(self.images.to(device), self.labels.to(device), self.paths)


class MappedImages:
    """A split's images left in the memory-mapped store (N, S, S, 3) and read on indexing,
    for datasets whose decoded images do not fit in memory (``data.store``).

    Indexing with an int, a slice, or an index array/tensor returns what the same index of
    the in-memory tensor would: uint8 (…, 3, S, S) on the CPU. It stays on the host when
    asked to move (``to``): the loader copies each batch to the device instead.
    """

    def __init__(self, store: np.ndarray, rows: Sequence[int]):
        self.store = store
        self.rows = np.asarray(rows, dtype=np.int64)
        self.dtype = torch.uint8
        self.device = torch.device("cpu")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        _, h, w, c = self.store.shape
        return (len(self.rows), c, h, w)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        rows = self.rows[index]
        if np.ndim(rows) == 0:
            return self[np.asarray([index])][0]
        # Reading the file in row order is kinder to the disk; then undo the sort.
        order = np.argsort(rows, kind="stable")
        block = np.empty((len(rows), *self.store.shape[1:]), dtype=np.uint8)
        block[order] = self.store[rows[order]]
        return torch.from_numpy(block).permute(0, 3, 1, 2).contiguous()

    def to(self, device) -> "MappedImages":
        return self


def store_key(files: Sequence[Path], size: int, geometry: tuple = ("resize",)) -> str:
    """Cache key from each file's path, byte size and mtime (ns) plus the image size (and the
    geometry when it is not the whole-image resize, so existing stores keep their keys)."""
    extra = "" if tuple(geometry)[:1] == ("resize",) else "|" + "|".join(map(str, geometry))
    h = hashlib.sha256(f"v{STORE_FORMAT}|{size}{extra}".encode())
    for f in files:
        st = os.stat(f)
        h.update(f"|{f}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def decode_all(files: Sequence[Path], size: int, *, workers: int = 0, out: np.ndarray | None = None,
               geometry: tuple = ("resize",)) -> tuple[np.ndarray, list[str | None]]:
    """Decode ``files`` to an (N, S, S, 3) uint8 array (``out``, e.g. a memory-mapped file,
    when given); failures give a zero image and a reason. ``geometry``: ``(kind, crop_fraction)``
    of :func:`bench.data.imagefolder.decode_resized`."""
    if out is None:
        out = np.zeros((len(files), size, size, 3), dtype=np.uint8)
    reasons: list[str | None] = [None] * len(files)
    jobs = [(str(f), size, *geometry) for f in files]
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
    files: Sequence[Path], size: int, cache_dir: str | os.PathLike | None, *, workers: int = 0,
    geometry: tuple = ("resize",),
) -> tuple[np.ndarray, list[str | None]]:
    """``decode_all`` through an on-disk cache (``None`` disables the cache)."""
    if cache_dir is None:
        return decode_all(files, size, workers=workers, geometry=geometry)
    key = store_key(files, size, geometry)
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
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)  # full-size leftovers of a build that was killed
    with atomic_path(arr_path) as tmp:
        # Decoded straight into the file: the images never need to fit in memory at once.
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(files), size, size, 3))
        _, reasons = decode_all(files, size, workers=workers, out=out, geometry=geometry)
        out.flush()
        del out
    # The metadata is written last: its presence means the array is complete (a truncated
    # array after a machine crash fails the shape check above and is decoded again).
    write_json_atomic(meta_path, {"size": size, "n": len(files), "reasons": reasons})
    return np.load(arr_path, mmap_mode="r"), reasons


def file_hashes(files: Sequence[Path], cache_dir: str | os.PathLike | None) -> list[str]:
    """sha1 of every file's bytes (duplicates share a split), cached under ``cache_dir`` with the
    store's key rule (each file's path, size and mtime): every run of a sweep needs them, and
    reading 17,092 files again for each of 27 models costs about a minute."""
    from bench.data.split import file_sha1

    if cache_dir is None:
        return [file_sha1(f) for f in files]
    path = Path(cache_dir) / "hashes" / f"{store_key(files, 0)}.json"
    try:
        hashes = json.loads(path.read_text())
        if isinstance(hashes, list) and len(hashes) == len(files):
            return hashes
    except (OSError, ValueError):
        pass  # absent or unreadable: compute
    hashes = [file_sha1(f) for f in files]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, hashes)
    return hashes


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``), None if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


# In memory, the decoded images are held once as the splits' tensors, plus a transient copy of
# the largest split while it is transposed to channels-first: budget twice the store.
STORE_MEMORY_FACTOR = 2


def memory_need(n_images: int, size: int) -> int:
    """Bytes of memory the in-memory store needs for ``n_images`` uint8 images at ``size`` px."""
    return STORE_MEMORY_FACTOR * n_images * 3 * size * size


def check_store_mode(requested: str) -> None:
    if requested not in STORE_MODES:
        raise ValueError(f"data.store={requested!r} is not one of {', '.join(STORE_MODES)}; auto keeps the "
                         "decoded images in memory when they fit and reads them from the store file otherwise.")


def choose_store_mode(requested: str, n_images: int, size: int, *, have_store_file: bool = True) -> str:
    """``memory`` or ``mmap`` for ``data.store`` (``auto``: mmap only when memory would not do and
    there is a store file to map)."""
    check_store_mode(requested)
    if requested == "auto" and not have_store_file:
        return "memory"
    if requested != "auto":
        return requested
    available = available_memory()
    return "mmap" if available is not None and memory_need(n_images, size) > available else "memory"


def to_split(images_nhwc: np.ndarray, labels: Sequence[int], paths: Sequence[str]) -> SplitData:
    """Build a SplitData from NHWC uint8 images (channels-first for torch)."""
    images = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
    return SplitData(images, torch.as_tensor(np.asarray(labels), dtype=torch.long), list(paths))
