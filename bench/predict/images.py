"""bench-predict's images: the files of a folder, decoded as each checkpoint's run decoded its own,
and the members' softmax probabilities, a batch at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from bench.data.imagefolder import IMAGE_EXTENSIONS, try_decode
from bench.data.transforms import Normalize
from bench.predict.checkpoints import LoadedCheckpoint


def list_images(root) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files under ``root`` (sorted) and (path, reason) for other non-hidden files."""
    root = Path(root)
    images, skipped = [], []
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not f.is_file():
            continue
        if f.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(f)
        else:
            skipped.append((rel.as_posix(), f"not an image file (extension not one of {', '.join(IMAGE_EXTENSIONS)})"))
    return images, skipped


def _to_batch(arrays: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 HWC arrays -> uint8 tensor (N, 3, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2)))


@torch.inference_mode()
def predict_probs(checkpoints: Sequence[LoadedCheckpoint], files: Sequence[Path], *, batch_size: int = 64,
                  device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """Probabilities (checkpoints, readable images, classes), the readable mask and reasons.

    Images are decoded once per distinct input size and geometry, a batch at a time.
    """
    device = torch.device(device)
    sizes = sorted({c.decoding for c in checkpoints}, key=str)
    norms = [Normalize(c.mean, c.std, device=device) for c in checkpoints]
    n_cls = len(checkpoints[0].class_names)
    reasons: list[str | None] = [None] * len(files)
    out = []
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        decoded: dict[tuple, list] = {}
        for size in sizes:
            decoded[size] = [try_decode((str(f), *size)) for f in chunk]
        ok = []
        for i in range(len(chunk)):
            failed = [decoded[s][i][1] for s in sizes if decoded[s][i][0] is None]
            if failed:
                reasons[start + i] = failed[0]
            else:
                ok.append(i)
        if not ok:
            continue
        out.append(member_probs(checkpoints, {s: [decoded[s][i][0] for i in ok] for s in sizes}, norms, device))
    readable = np.array([r is None for r in reasons], dtype=bool)
    probs = np.concatenate(out, axis=1) if out else np.zeros((len(checkpoints), 0, n_cls))
    return probs, readable, reasons


@torch.inference_mode()
def member_probs(checkpoints: Sequence[LoadedCheckpoint], arrays: dict[tuple, list[np.ndarray]],
                 norms: Sequence[Normalize], device) -> np.ndarray:
    """Softmax probabilities (checkpoints, images, classes) of one batch of decoded images;
    ``arrays[c.decoding]`` holds the batch as checkpoint ``c`` decodes it (uint8 HWC)."""
    n = len(next(iter(arrays.values())))
    probs = np.zeros((len(checkpoints), n, len(checkpoints[0].class_names)))
    batches: dict[tuple, torch.Tensor] = {}
    for m, (ckpt, norm) in enumerate(zip(checkpoints, norms)):
        # Stain-normalised to the member's own training target (data.stain), once per target.
        key = (ckpt.decoding, ckpt.stain.key if ckpt.stain else None)
        if key not in batches:
            batch = arrays[ckpt.decoding]
            batches[key] = _to_batch(ckpt.stain.apply_all(batch) if ckpt.stain else batch).to(device)
        out_m = ckpt.model(norm(batches[key]))
        logits = out_m if isinstance(out_m, torch.Tensor) else tuple(out_m)[0]
        probs[m] = torch.softmax(logits.float(), dim=1).cpu().numpy()
    return probs
