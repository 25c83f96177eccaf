"""A failed write said in one line: a full disk names where, how much is free and how much the
write needed, and what to do (:func:`explain_error`, for a failed run's status)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from bench.runs import atomic


def save_torch_atomic(path, obj: Any, *, durable: bool = True) -> None:
    """:func:`bench.runs.atomic.save_torch_atomic`; a failed write carries what it was writing
    (``exc.write_need``: the path and the bytes of its tensors), so a full disk is said with how
    much the checkpoint needed, not only how much was free."""
    try:
        atomic.save_torch_atomic(path, obj, durable=durable)
    except Exception as exc:
        with contextlib.suppress(AttributeError, TypeError):  # an exception type without a __dict__
            exc.write_need = (Path(path), tensor_bytes(obj))
        raise


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) checkpoint object: about the size of its file."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def _write_need(exc: BaseException) -> tuple[Path, int] | None:
    """``write_need`` of ``exc`` or of an exception it was raised from / during."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        need = getattr(exc, "write_need", None)
        if need is not None:
            return need
        exc = exc.__cause__ or exc.__context__
    return None


# Below this much free space a write error is taken for a full disk (torch reports one as
# "enforce fail at inline_container.cc ... file write failed", not as ENOSPC).
DISK_FULL_MARGIN = 64 * 2**20


def explain_error(exc: BaseException, folder) -> str:
    """A failed run's one-line error; a full disk (ENOSPC, or a write error with the disk nearly
    full) becomes one sentence saying where, how much is free (and, for a checkpoint, how much it
    needed) and what to do."""
    import errno
    import shutil

    text = f"{type(exc).__name__}: {exc}"
    writing = isinstance(exc, OSError) or "inline_container" in text or "write" in text.lower()
    try:
        existing = next(p for p in [Path(folder), *Path(folder).parents] if p.exists())
        free = shutil.disk_usage(existing).free
    except (OSError, StopIteration):
        return text
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or (writing and free < DISK_FULL_MARGIN):
        need = _write_need(exc)
        needed = f", {need[1] / 2**20:.1f} MB needed to write {need[0].name}" if need else ""
        return (f"disk full at {existing} ({free / 2**20:.0f} MB free{needed}) while writing this run's files. Earlier "
                "results are intact; free some space (or set paths.results_dir=... on a bigger disk) and rerun "
                f"the same command to resume. ({text.splitlines()[0][:200]})")
    return text
