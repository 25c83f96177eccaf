"""The device a run trains on, and what it reports about it: one place for every command."""

from __future__ import annotations

import gc
import logging
import platform

import torch

log = logging.getLogger("bench.train")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"trainer.device={name!r} but CUDA is not available; use trainer.device=auto or cpu.")
    return device


def env_info(device: torch.device) -> dict:
    """Versions and hardware, for metrics.json."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "platform": platform.platform(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
    }


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by tensors on CUDA; on CPU the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    except ImportError:  # Windows
        return float("nan")


def to_device_if_fits(split, device):
    """Keep the uint8 store on the GPU when it fits (no host copies per batch); else stay on the host."""
    try:
        return split.to(device)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        log.warning("the decoded images do not fit on %s; batches are copied from pinned host memory", device)
        return split


def release_memory() -> None:
    """Free what a finished (or failed) run held before the next one allocates."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
