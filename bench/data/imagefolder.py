"""Reading an ImageFolder tree (one folder per class, the PBC layout) and decoding its images.

Decoding is the only place that touches image files. Every file is decoded once,
resized to the training size and kept as uint8 (see ``store.py``); a file that does
not decode is excluded at start with its reason instead of crashing an epoch later.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm", ".pgm")


class DataError(ValueError):
    """Bad input data: the message names the path or value and the fix."""


@dataclass(frozen=True)
class ImageRecord:
    path: str  # relative to the data root, with forward slashes
    label: str  # class name (the folder name)


def scan_imagefolder(root: str | os.PathLike) -> tuple[list[ImageRecord], list[str]]:
    """List image files under ``root/<class>/``; class names are the sorted folder names.

    Files are found recursively inside each class folder; hidden files and names
    without an image extension are ignored.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"data.root={str(root)!r} is not a readable folder. Point data.root at a folder with one "
            "sub-folder per class (the PBC layout, e.g. /data/PBC_dataset_normal_DIB/basophil/*.jpg)."
        )
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    records: list[ImageRecord] = []
    class_names: list[str] = []
    for class_dir in class_dirs:
        files = sorted(
            f
            for f in class_dir.rglob("*")
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            continue  # e.g. an empty or non-image folder beside the classes
        class_names.append(class_dir.name)
        records.extend(ImageRecord(f.relative_to(root).as_posix(), class_dir.name) for f in files)
    if len(class_names) < 2:
        raise DataError(
            f"data.root={str(root)!r} has {len(class_names)} class folder(s) with images "
            f"({', '.join(class_names) or 'none'}); a classifier needs at least 2. Expected one "
            f"sub-folder per class holding image files ({', '.join(IMAGE_EXTENSIONS)})."
        )
    return records, class_names


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB.

    Transparent pixels are composited onto white (a blank slide), not black, so an
    RGBA or palette image with transparency does not gain a black background.
    16/32-bit grayscale is rescaled to 8 bits by its range instead of being clipped.
    """
    img = ImageOps.exif_transpose(img) if hasattr(img, "getexif") else img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.round().astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


# How an image becomes size x size (``data.geometry``): ``resize`` the whole image (no crop), or
# ``resize_crop``: the shorter side to round(size / crop_fraction) (256 for 224, 342 for 299 at
# 0.875), then the centre size x size, as torchvision's Resize(256) + CenterCrop(224).
GEOMETRIES = ("resize", "resize_crop")


def resize_crop_size(size: int, crop_fraction: float) -> int:
    return int(round(size / crop_fraction))


def decode_resized(path: str | os.PathLike, size: int, geometry: str = "resize",
                   crop_fraction: float = 0.875) -> np.ndarray:
    """Decode one image to an RGB uint8 array of shape (size, size, 3).

    ``geometry="resize"``: the whole image is resized to size x size (no crop), bilinear with
    antialiasing: torchvision's ``Resize((size, size))`` on a PIL image. ``"resize_crop"``:
    torchvision's ``Resize(round(size / crop_fraction))`` (shorter side, aspect kept) then
    ``CenterCrop(size)``, the ImageNet evaluation transform.
    A JPEG at least twice the target size is first decoded at 1/2, 1/4 or 1/8 scale
    (libjpeg DCT scaling, PIL ``draft``), about 3x faster for PBC's 360 px images at 64 px;
    the result differs from a full decode by about 1 grey level (of 255) on average.
    Raises on any decode problem; the caller records the reason.
    """
    if geometry not in GEOMETRIES:
        raise ValueError(f"data.geometry={geometry!r} is not one of {', '.join(GEOMETRIES)}")
    target = size if geometry == "resize" else resize_crop_size(size, crop_fraction)
    with Image.open(path) as img:
        if img.format == "JPEG":
            # Decode at 1/2, 1/4 or 1/8 scale in the DCT domain when that still leaves at least
            # target x target pixels (PBC's 360 px JPEGs for 64 px: a 90 px decode, about 3x faster).
            img.draft("RGB", (target, target))
        img.load()  # force the full decode so truncated files fail here
        rgb = to_rgb(img)
    return resize_rgb(rgb, size, geometry, crop_fraction)


def resize_rgb(rgb: Image.Image, size: int, geometry: str = "resize", crop_fraction: float = 0.875) -> np.ndarray:
    """An RGB PIL image made size x size the way ``decode_resized`` does it (``geometry``), as a
    uint8 array: the one rule for a file and for a cell cropped from a smear field."""
    if geometry == "resize_crop":
        rgb = _resize_shorter_then_centre_crop(rgb, resize_crop_size(size, crop_fraction), size)
    elif rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def _resize_shorter_then_centre_crop(img: Image.Image, shorter: int, size: int) -> Image.Image:
    """torchvision's Resize(shorter) + CenterCrop(size) on a PIL image (same sizes and offsets)."""
    w, h = img.size
    if w <= h:
        new = (shorter, int(shorter * h / w))
    else:
        new = (int(shorter * w / h), shorter)
    if new != (w, h):
        img = img.resize(new, Image.BILINEAR)
    w, h = img.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def try_decode(args: tuple) -> tuple[np.ndarray | None, str | None]:
    """``decode_resized(path, size[, geometry, crop_fraction])`` that returns ``(array, None)`` or
    ``(None, reason)``; pool-friendly."""
    path, size, *geometry = args
    try:
        return decode_resized(path, size, *geometry), None
    except Exception as exc:  # any decoder error means "exclude this file", with the reason
        return None, f"{type(exc).__name__}: {exc}".strip()


def class_folders_without_images(root: str | os.PathLike) -> list[str]:
    """Sub-folders of ``root`` holding no image file (``scan_imagefolder`` leaves them out)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return []
    empty = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not any(f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS
                   for f in class_dir.rglob("*")):
            empty.append(class_dir.name)
    return empty
