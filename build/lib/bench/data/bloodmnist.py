"""MedMNIST's BloodMNIST (``data=bloodmnist``): the PBC images as ``.npz`` arrays.

BloodMNIST (Yang et al., MedMNIST v2, Sci. Data 2023; MedMNIST+ sizes) holds the
17,092 PBC images centre-cropped and resized to 28, 64, 128 or 224 px, with an
official 7:1:2 train/val/test split. Using those splits makes our numbers comparable
with published MedMNIST results, which a random split of the PBC folders would not.

One file per size, each with ``{train,val,test}_images`` (N, H, W, 3) uint8 and
``{train,val,test}_labels`` (N, 1)::

    bloodmnist.npz        28 px
    bloodmnist_64.npz     64 px
    bloodmnist_128.npz   128 px
    bloodmnist_224.npz   224 px

Labels 0..7 are named after the PBC dataset's class folders (not MedMNIST's long
names), so per-class columns line up with ``data=imagefolder`` runs.
"""

from __future__ import annotations

import hashlib
import logging
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from bench import runs

log = logging.getLogger(__name__)

BLOODMNIST_CLASSES: tuple[str, ...] = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",  # immature granulocytes (promyelocytes, myelocytes, metamyelocytes)
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)
BLOODMNIST_SIZES: tuple[int, ...] = (28, 64, 128, 224)
SPLITS: tuple[str, ...] = ("train", "val", "test")

# MedMNIST v3 Zenodo record; it serves every size (the older v2 record only had 28 px).
ZENODO_FILES_URL = "https://zenodo.org/records/10519652/files"
# Checksums published with the record (medmnist's INFO table), to reject truncated downloads.
BLOODMNIST_MD5: dict[int, str] = {
    28: "7053d0359d879ad8a5505303e11de1dc",
    64: "2b94928a2ae4916078ca51e05b6b800b",
    128: "adace1e0ed228fccda1f39692059dd4c",
    224: "b718ff6835fcbdb22ba9eacccd7b2601",
}
_CHUNK = 1 << 20


def _check_size(size) -> int:
    """The size as int, or ValueError listing the sizes BloodMNIST comes in."""
    valid = ", ".join(str(s) for s in BLOODMNIST_SIZES)
    try:
        value = int(size)
    except (TypeError, ValueError):
        value = None
    if isinstance(size, bool) or value not in BLOODMNIST_SIZES or (isinstance(size, float) and size != value):
        raise ValueError(f"BloodMNIST size must be one of {valid} (pixels), got {size!r}")
    return value


def bloodmnist_filename(size) -> str:
    size = _check_size(size)
    return "bloodmnist.npz" if size == 28 else f"bloodmnist_{size}.npz"


def bloodmnist_file(root, size) -> Path:
    """``root/bloodmnist.npz`` for 28 px, ``root/bloodmnist_<size>.npz`` otherwise."""
    return Path(root).expanduser() / bloodmnist_filename(size)


def bloodmnist_url(size) -> str:
    """Where the official file for ``size`` can be downloaded."""
    return f"{ZENODO_FILES_URL}/{bloodmnist_filename(size)}?download=1"


# --------------------------------------------------------------------------- download
def _missing_message(path: Path, size: int, reason: str | None = None) -> str:
    why = f" Downloading it failed: {reason}." if reason else ""
    return (
        f"BloodMNIST file not found: {path}.{why} Download {bloodmnist_url(size)} "
        f"and place it there as {path.name}, or point the data config at the folder that "
        f"holds it with data.root=/path/to/folder (and data.bloodmnist_size={size}), or set "
        f"data.download=true to fetch it automatically (needs internet access)."
    )


def download_bloodmnist(root, size, *, timeout: float = 60.0) -> Path:
    """Fetch the official file into ``root``; checksum-verified, renamed into place atomically.

    Raises FileNotFoundError (with the manual-download instructions) on any failure, so
    a caller sees the same kind of error whether the file was absent or unobtainable.
    """
    size = _check_size(size)
    path = bloodmnist_file(root, size)
    url = bloodmnist_url(size)
    log.info("downloading %s to %s", url, path)
    try:
        # A temp file beside the target: an interrupted download never looks like a dataset.
        with runs.atomic_path(path) as tmp:
            digest = hashlib.md5()
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
                while chunk := response.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != BLOODMNIST_MD5[size]:
                raise ValueError(f"checksum mismatch (md5 {digest.hexdigest()}, expected {BLOODMNIST_MD5[size]})")
    except (OSError, ValueError, urllib.error.URLError) as exc:
        raise FileNotFoundError(_missing_message(path, size, str(exc))) from exc
    return path


# --------------------------------------------------------------------------- validation
def _images_rgb(images: np.ndarray, path: Path, split: str, size: int) -> np.ndarray:
    """NHWC uint8 with 3 channels; grayscale (NHW or NHW1) is repeated to RGB."""
    key = f"{split}_images"
    if images.dtype != np.uint8:
        raise ValueError(f"{path}: {key} must be uint8, got {images.dtype}")
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim == 3:  # grayscale: the models expect 3 channels
        images = np.repeat(images[..., None], 3, axis=-1)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{path}: {key} must have shape (N, H, W, 3) or (N, H, W), got {images.shape}")
    if images.shape[1:3] != (size, size):
        raise ValueError(
            f"{path}: {key} are {images.shape[1]}x{images.shape[2]} px, expected {size}x{size} "
            f"for this file name; is it the file of another size?"
        )
    return images


def _labels_flat(labels: np.ndarray, path: Path, split: str, n_images: int) -> np.ndarray:
    """Labels as int64 of shape (N,), each in 0..7."""
    key = f"{split}_labels"
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: {key} must be integers, got {labels.dtype}")
    if labels.ndim == 2 and labels.shape[1] == 1:  # MedMNIST stores (N, 1)
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(f"{path}: {key} must have shape (N,) or (N, 1), got {labels.shape}")
    if len(labels) != n_images:
        raise ValueError(f"{path}: {key} has {len(labels)} labels for {n_images} images")
    labels = labels.astype(np.int64)
    n_classes = len(BLOODMNIST_CLASSES)
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"{path}: {key} must lie in 0..{n_classes - 1}, found {labels.min()}..{labels.max()}"
        )
    return labels


def _read_npz(path: Path, size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    try:
        npz = np.load(path, allow_pickle=False)  # never unpickle: the file may come from anywhere
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a readable .npz file ({exc})") from exc
    with npz:
        expected = [f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels")]
        missing = [k for k in expected if k not in npz.files]
        if missing:
            raise ValueError(
                f"{path}: missing arrays {', '.join(missing)}; a BloodMNIST file holds "
                f"{', '.join(expected)} (found {', '.join(npz.files) or 'none'})"
            )
        splits = {}
        for split in SPLITS:
            images = _images_rgb(npz[f"{split}_images"], path, split, size)
            labels = _labels_flat(npz[f"{split}_labels"], path, split, len(images))
            splits[split] = (images, labels)
    return splits


# --------------------------------------------------------------------------- public API
def load_bloodmnist(root, size, *, download: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The official splits: ``{"train": (images, labels), "val": ..., "test": ...}``.

    images: uint8 (N, size, size, 3); labels: int64 (N,) indexing BLOODMNIST_CLASSES.
    A missing file is downloaded when ``download`` is true; otherwise, or if that
    fails, FileNotFoundError says where it was looked for and how to get it.
    """
    size = _check_size(size)
    path = bloodmnist_file(root, size)
    if not path.is_file():
        if not download:
            raise FileNotFoundError(_missing_message(path, size))
        download_bloodmnist(root, size)
    return _read_npz(path, size)
