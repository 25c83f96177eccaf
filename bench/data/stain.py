"""Stain normalisation (``data.stain``): every image brought to one stain appearance, whose target
is fitted on training images only.

- ``macenko`` (Macenko et al. 2009): two stain vectors found in optical-density space, each image's
  stain concentrations rescaled to the target's 99th percentiles and recombined with the target's vectors.
- ``reinhard`` (Reinhard et al. 2001): each LAB channel brought to the target's mean and standard deviation.

Both are torchstain's (numpy backend): the fit, the per-image normalisation, its constants (Io 240,
alpha 1, beta 0.15). What is ours is where the target comes from and where the result goes:

- The target is fitted once, on the pixels of up to ``FIT_IMAGES`` training images spread evenly over
  the training split: never a validation or test image, so no split leaks into another.
- Every split (training, validation, test) is normalised to it, once per experiment: the result is
  cached under ``paths.cache_dir`` beside the decoded-image store, keyed by the images' bytes, the
  method and the target, so the 27 models of a sweep normalise the images once.
- The target is saved with the run (best.pt, metrics.json): bench-predict, bench-evaluate and the smear
  chain normalise new images to the target the model was trained with.
- An image the method cannot normalise (a blank field: no stained pixel for Macenko, a flat channel for
  Reinhard) is kept as decoded and counted per split, with a warning; it never stops a sweep.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

STAIN_FORMAT = 1  # bump when the normalised bytes would change for the same images and target
FIT_IMAGES = 256  # training images whose pixels make the target (all of them when fewer)
_CHUNK = 256  # images normalised and written per step (bounded memory for a memory-mapped split)
# torchstain's Macenko constants, spelled out because the blank-image check below uses them too.
_IO, _ALPHA, _BETA = 240, 1, 0.15
_MIN_STAINED_PIXELS = 16  # fewer pixels above the optical-density floor: no stain vectors to find


class StainError(ValueError):
    """The stain target cannot be fitted: the message names the images and the fix."""


@dataclass(frozen=True)
class StainNormalizer:
    """A fitted target: ``method`` and its parameters, JSON-ready (``record``) and rebuildable from it."""

    method: str
    target: dict

    @property
    def record(self) -> dict:
        return {"method": self.method, "target": self.target}

    @property
    def key(self) -> str:
        text = json.dumps([STAIN_FORMAT, self.method, self.target], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @classmethod
    def from_record(cls, record: dict | None) -> "StainNormalizer | None":
        if not record or record.get("method", "none") == "none":
            return None
        return cls(str(record["method"]), dict(record["target"]))

    def _library(self):
        from torchstain.numpy.normalizers import NumpyMacenkoNormalizer, NumpyReinhardNormalizer

        if self.method == "macenko":
            lib = NumpyMacenkoNormalizer()
            lib.HERef, lib.maxCRef = np.asarray(self.target["he"]), np.asarray(self.target["max_c"])
        else:
            lib = NumpyReinhardNormalizer()
            lib.target_means, lib.target_stds = np.asarray(self.target["means"]), np.asarray(self.target["stds"])
        return lib

    def apply(self, image: np.ndarray, lib=None) -> np.ndarray | None:
        """One uint8 HWC image normalised to the target, or None when the method cannot do it."""
        lib = lib or self._library()
        if self.method == "macenko" and _stained_pixels(image) < _MIN_STAINED_PIXELS:
            return None
        try:
            with np.errstate(divide="raise", invalid="raise", over="raise"):
                if self.method == "macenko":
                    out = lib.normalize(image, Io=_IO, alpha=_ALPHA, beta=_BETA, stains=False)[0]
                else:
                    out = lib.normalize(image)
        except (FloatingPointError, ValueError, np.linalg.LinAlgError):
            return None
        return np.ascontiguousarray(out, dtype=np.uint8)

    def apply_all(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Each image normalised, or as it was when the method cannot normalise it (bench-predict)."""
        lib = self._library()
        return [image if (out := self.apply(image, lib)) is None else out for image in images]


def _stained_pixels(image: np.ndarray) -> int:
    """Pixels whose optical density is at least beta in every channel (torchstain's Macenko keeps only
    those to find the stain vectors)."""
    od = -np.log((image.reshape(-1, 3).astype(float) + 1) / _IO)
    return int((od >= _BETA).all(axis=1).sum())


def fit_target(method: str, train_images) -> StainNormalizer:
    """The target of ``method`` fitted on up to FIT_IMAGES training images (uint8 (N, 3, S, S), a tensor
    or the memory-mapped store), taken at evenly spaced positions of the split, as one mosaic."""
    from torchstain.numpy.normalizers import NumpyMacenkoNormalizer, NumpyReinhardNormalizer

    n = len(train_images)
    rows = np.unique(np.linspace(0, n - 1, min(n, FIT_IMAGES)).round().astype(np.int64))
    mosaic = np.concatenate([_hwc(train_images[int(i)]) for i in rows], axis=1)
    why = (f"data.stain={method}: the target cannot be fitted on the {len(rows)} training image(s) sampled "
           f"for it")
    if method == "macenko":
        if _stained_pixels(mosaic) < _MIN_STAINED_PIXELS:
            raise StainError(f"{why}: almost no pixel is stained (optical density >= {_BETA} in every channel). "
                             "Check that data.root holds stained cells, or use data.stain=reinhard or none.")
        lib = NumpyMacenkoNormalizer()
        with np.errstate(divide="raise", invalid="raise", over="raise"):
            lib.fit(mosaic, Io=_IO, alpha=_ALPHA, beta=_BETA)
        target = {"he": lib.HERef.tolist(), "max_c": lib.maxCRef.tolist()}
    else:
        lib = NumpyReinhardNormalizer()
        lib.fit(mosaic)
        if not np.all(np.asarray(lib.target_stds) > 0):
            raise StainError(f"{why}: a LAB channel has no spread (blank images). Check data.root, or use "
                             "data.stain=none.")
        target = {"means": np.asarray(lib.target_means, float).tolist(), "stds": np.asarray(lib.target_stds, float).tolist()}
    return StainNormalizer(method, {**target, "fit_images": int(len(rows))})


def _hwc(image) -> np.ndarray:
    return np.ascontiguousarray(torch.as_tensor(image).permute(1, 2, 0).numpy())


def normalise_images(images, normalizer: StainNormalizer, cache_dir: str | Path | None,
                     *, label: str = "") -> tuple[np.ndarray, int]:
    """Every image of ``images`` (uint8 (N, 3, S, S), tensor or memory-mapped) normalised: an (N, S, S, 3)
    uint8 array (memory-mapped from the cache when there is one) and how many were kept as decoded."""
    n, _, h, w = images.shape
    if cache_dir is None:
        out = np.empty((n, h, w, 3), dtype=np.uint8)
        return out, _normalise_into(images, normalizer, out, label)
    from bench.runs import atomic_path, write_json_atomic

    digest = hashlib.sha256(f"{normalizer.key}|{n}|{h}|{w}".encode())
    for start in range(0, n, _CHUNK):
        digest.update(np.ascontiguousarray(torch.as_tensor(images[start:start + _CHUNK]).numpy()).tobytes())
    folder = Path(cache_dir) / "stain"
    arr_path, meta_path = folder / f"{digest.hexdigest()[:20]}.npy", folder / f"{digest.hexdigest()[:20]}.json"
    if arr_path.exists() and meta_path.exists():
        try:
            arr = np.load(arr_path, mmap_mode="r")
            if arr.shape == (n, h, w, 3):
                log.info("stain-normalised store hit (%s): %s", label, arr_path)
                return arr, int(json.loads(meta_path.read_text())["kept_as_decoded"])
        except (OSError, ValueError, KeyError):
            pass  # unreadable: normalise again below
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(arr_path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, h, w, 3))
        kept = _normalise_into(images, normalizer, out, label)
        out.flush()
        del out
    write_json_atomic(meta_path, {"kept_as_decoded": kept, "method": normalizer.method})  # written last: complete
    return np.load(arr_path, mmap_mode="r"), kept


def _normalise_into(images, normalizer: StainNormalizer, out: np.ndarray, label: str) -> int:
    from tqdm.auto import tqdm

    lib, kept = normalizer._library(), 0
    n = len(images)
    with tqdm(total=n, desc=f"stain {normalizer.method} {label}".strip(), unit="img", leave=False,
              disable=n < 2 * _CHUNK) as bar:
        for start in range(0, n, _CHUNK):
            block = torch.as_tensor(images[start:start + _CHUNK]).permute(0, 2, 3, 1).numpy()
            for i, image in enumerate(block):
                done = normalizer.apply(np.ascontiguousarray(image), lib)
                kept += done is None
                out[start + i] = image if done is None else done
            bar.update(len(block))
    return kept
