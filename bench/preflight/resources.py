"""The preflight's checks of the machine: disk for the checkpoints and the decoded-image store,
memory for the decoded images, the device."""

from __future__ import annotations

import shutil
from pathlib import Path

from bench.preflight.models import _image_sizes, _valid_size
from bench.preflight.report import Plan, Report

# A finished run keeps best.pt (fp32 weights) and last.pt (weights + SGD momentum): 12 bytes per
# parameter. While last.pt and best.pt are rewritten, old and new copies exist together: another
# 12 bytes per parameter, for one model at a time (the largest counts).
BYTES_PER_PARAM_KEPT = 3 * 4
BYTES_PER_PARAM_REWRITE = 3 * 4


def check_disk(plan: Plan, report: Report) -> None:
    from bench.models import get_model_spec

    cfg = plan.cfg
    results = Path(cfg.paths.results_dir).expanduser().resolve()
    existing = next((p for p in [results, *results.parents] if p.exists()), Path("/"))
    problem = _not_writable(existing)
    if problem:
        report.problems.append(f"paths.results_dir={cfg.paths.results_dir}: {existing} is not writable ({problem}); "
                               "nothing could be saved. Point paths.results_dir at a writable folder.")
        return
    free = shutil.disk_usage(existing).free
    need, largest = 0, 0
    for name in plan.models:
        try:
            params = _param_count(name, get_model_spec(name))
        except Exception:
            continue  # reported by the model checks
        need += params * BYTES_PER_PARAM_KEPT * len(plan.seeds)
        largest = max(largest, params)
    need += largest * BYTES_PER_PARAM_REWRITE
    line = f"disk: checkpoints need about {_size(need)}, {_size(free)} free at {existing}"
    if need * 1.2 > free:
        report.problems.append(line + "; free some space or set paths.results_dir=... elsewhere.")
    else:
        report.notes.append(line)


def _not_writable(folder: Path) -> str | None:
    """Why a file cannot be created in ``folder`` (tried for real: permissions, a read-only
    mount, a full disk), or None."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return None


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.0f} MiB"


def check_memory(plan: Plan, report: Report, n_images: int | None, configs=None) -> None:
    from bench.data.store import available_memory, check_store_mode, memory_need
    from bench.models import get_model_spec

    cfg = plan.cfg
    try:
        check_store_mode(cfg.data.store)
    except ValueError as exc:
        report.problems.append(str(exc))
        return
    sizes = []
    for name in plan.models:
        for image_size in _image_sizes(configs or [cfg]):
            try:
                if _valid_size(image_size):
                    sizes.append(get_model_spec(name).image_size(image_size))
            except Exception:
                continue  # reported by the model checks
    if not n_images or not sizes:
        return
    _check_store_disk(cfg, n_images, sorted(set(sizes)), report)
    available = available_memory()
    if available is None or cfg.data.store == "mmap":
        return
    size = max(sizes)
    need = memory_need(n_images, size)
    line = f"memory: {n_images} decoded images at {size} px need about {_size(need)}, {_size(available)} available"
    if need <= available:
        report.notes.append(line)
    elif cfg.data.store == "auto":
        report.warnings.append(line + "; training reads them from the memory-mapped store file instead "
                               "(data.store=auto), which is slower where the disk is slow.")
    else:
        report.problems.append(line + "; free memory, set data.store=auto (or mmap) to read them from the store "
                               "file, or set a smaller data.image_size.")


def _check_store_disk(cfg, n_images: int, sizes: list[int], report: Report) -> None:
    """The decoded-image store (one per input size) must fit on the cache's disk."""
    if not cfg.paths.cache_dir:
        return
    cache = Path(cfg.paths.cache_dir).expanduser().resolve()
    existing = next((p for p in [cache, *cache.parents] if p.exists()), Path("/"))
    problem = _not_writable(existing)
    if problem:
        report.problems.append(f"paths.cache_dir={cfg.paths.cache_dir}: {existing} is not writable ({problem}); "
                               "the decoded images are stored there. Point paths.cache_dir at a writable folder.")
        return
    need = sum(n_images * s * s * 3 for s in sizes)
    free = shutil.disk_usage(existing).free
    line = (f"disk: the decoded images ({n_images} at {', '.join(f'{s} px' for s in sizes)}) need about "
            f"{_size(need)}, {_size(free)} free at {existing}")
    if need * 1.1 > free:
        report.problems.append(line + "; free space, set paths.cache_dir=... on a bigger disk, or a smaller "
                                      "data.image_size.")
    else:
        report.notes.append(line)


_PARAMS: dict[str, int] = {}


def _param_count(name: str, spec) -> int:
    """Parameters of the model with an 8-class head, counted on the meta device (no memory)."""
    if name not in _PARAMS:
        import torch

        from bench.models import create_model

        with torch.device("meta"):
            model = create_model(name, num_classes=8, pretrained=False)
        _PARAMS[name] = sum(p.numel() for p in model.parameters())
    return _PARAMS[name]


def check_device(cfg, report: Report) -> None:
    import torch

    device = cfg.trainer.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        report.problems.append(f"trainer.device={device} but no CUDA GPU is visible; use trainer.device=auto or cpu.")
    elif device == "auto" and not torch.cuda.is_available():
        report.warnings.append(
            "no CUDA GPU found: training runs on the CPU, which is fine for the demo and far too slow "
            "for the 27-model protocol at 224 px."
        )
    elif torch.cuda.is_available():
        report.notes.append(f"device: {torch.cuda.get_device_name(0)}")

