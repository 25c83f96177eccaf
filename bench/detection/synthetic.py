"""Procedural smear fields with exact boxes (``data=synthetic_smear``), the detection stand-in.

Each field is drawn with the same primitives as the synthetic single cells
(:mod:`bench.data.cell_drawing`): a pale beige background, many pale pink red cells with a
central pallor, one to a few white cells of the PBC types (nucleus, cytoplasm, granules as
the single-cell generator draws them) and clumps of platelets, then the same optics blur,
stain jitter and noise. Cells are placed without overlapping, so every box is exactly the
cell it holds. Field ``i`` is drawn from ``numpy.random.default_rng([seed, i])`` only.

Written as a COCO dataset (``images/field-XXXX.png`` + ``instances.json``), the format the
detection loader reads, under ``<cache>/datasets/``; labels are ``rbc``, ``platelet`` and the
seven nucleated PBC types (``data.label_map`` merges them, e.g. into ``wbc``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from bench.data import cell_drawing as cells

GENERATOR_VERSION = 1
MARKER_NAME = ".complete.json"
WHITE_TYPES = tuple(c for c in cells.CLASS_NAMES if c != "platelet")
_UNIT = 4.0  # a single-cell crop is a quarter of a field wide: the cell generator's radii scale by this


def _free(x: float, y: float, r: float, placed: list[tuple[float, float, float]], size: int) -> bool:
    if x - r < 0 or y - r < 0 or x + r > size or y + r > size:
        return False
    return all(math.hypot(x - px, y - py) > r + pr + 1.0 for px, py, pr in placed)


def _place(rng, r: float, placed, size: int, tries: int = 200):
    for _ in range(tries):
        x, y = rng.uniform(r, size - r, 2)
        if _free(x, y, r, placed, size):
            return float(x), float(y)
    return None


def _canvas(img: Image.Image, centre_px, unit_px: float, angle: float) -> "cells._Canvas":
    """The cell generator's canvas, re-based: cell-local units of ``unit_px`` around ``centre_px``."""
    cv = cells._Canvas(img, (0.0, 0.0), angle)
    cv.px, cv.centre = unit_px, np.asarray(centre_px, float)
    return cv


def draw_field(rng: np.random.Generator, size: int = 256) -> tuple[Image.Image, list[dict]]:
    """One field and its objects: ``{"label", "box": [xmin, ymin, xmax, ymax]}`` in pixels."""
    ss = cells._SUPERSAMPLE
    px = size * ss
    img = Image.new("RGB", (px, px), cells._jitter(rng, np.add(cells._BACKGROUND, rng.normal(0, 5)), 2.5))
    bg = img.getpixel((px // 2, px // 2))
    unit = px / _UNIT  # pixels (supersampled) per single-cell-crop width
    placed: list[tuple[float, float, float]] = []
    objects: list[dict] = []
    for _ in range(int(rng.integers(1, 4))):  # white cells first: they get their room
        name = WHITE_TYPES[int(rng.integers(len(WHITE_TYPES)))]
        style = cells._STYLE[name]
        r = rng.uniform(*style["radius"]) * unit
        at = _place(rng, r * 1.08, placed, px)
        if at is None:
            continue
        placed.append((*at, r * 1.08))
        cv = _canvas(img, at, unit, rng.uniform(0, 2 * np.pi))
        # _white_cell draws radius R (cell units) from its own draw of the style's range:
        # give it a one-value range so the drawn cell is the r placed here.
        cells._white_cell(cv, rng, name, {**style, "radius": (r / unit, r / unit)})
        objects.append({"label": name, "box": _box(at, r * 1.06, ss, size)})
    for _ in range(int(rng.integers(1, 3))):  # platelet clumps
        r = rng.uniform(0.05, 0.09) * unit
        at = _place(rng, r * 1.2, placed, px)
        if at is None:
            continue
        placed.append((*at, r * 1.2))
        _platelet_clump(_canvas(img, at, unit, 0.0), rng, r / unit)
        objects.append({"label": "platelet", "box": _box(at, r * 1.15, ss, size)})
    for _ in range(int(rng.integers(18, 32))):  # red cells fill the rest
        r = rng.uniform(0.11, 0.15) * unit
        at = _place(rng, r, placed, px, tries=60)
        if at is None:
            continue
        placed.append((*at, r))
        cv = _canvas(img, at, unit, rng.uniform(0, np.pi))
        rr = r / unit
        cv.polygon(cells._blob(rng, 0, 0, rr, rr * rng.uniform(0.88, 1.0), 0.03, n=24), cells._jitter(rng, cells._RBC, 6))
        pallor = tuple(int(0.45 * a + 0.55 * b) for a, b in zip(bg, cells._RBC))
        rp = rr * rng.uniform(0.25, 0.45)
        cv.polygon(cells._blob(rng, 0, 0, rp, rp, 0.1, n=16), pallor)
        objects.append({"label": "rbc", "box": _box(at, r * 1.03, ss, size)})
    return cells._finish(img, Image.new("L", img.size, 0), rng, size), objects


def _platelet_clump(cv, rng, radius: float) -> None:
    style = cells._STYLE["platelet"]
    k = int(rng.integers(3, 8))
    halo = cells._jitter(rng, style["cyto"], 8)
    for x, y in cells._in_disc(rng, k, radius * 0.6):
        r = radius * rng.uniform(0.25, 0.4)
        cv.polygon(cells._blob(rng, x, y, r * 1.3, r, 0.2, n=12), halo)
    frags = cells._in_disc(rng, 3 * k, radius * 0.6)
    cv.dots(frags, radius * rng.uniform(0.08, 0.16, len(frags)), [cells._jitter(rng, style["nuc"], 14) for _ in frags])


def _box(centre, r: float, ss: int, size: int) -> list[float]:
    x, y = centre
    return [max(0.0, (x - r) / ss), max(0.0, (y - r) / ss), min(float(size), (x + r) / ss), min(float(size), (y + r) / ss)]


# --------------------------------------------------------------------------- on-disk cache
def synthetic_smear_root(cache_dir, *, n_fields: int = 120, size: int = 256, seed: int = 0) -> Path:
    """The COCO folder of ``n_fields`` fields, drawn once and cached (safe for parallel first use)."""
    params = {"n_fields": int(n_fields), "size": int(size), "seed": int(seed), "version": GENERATOR_VERSION}
    root = Path(cache_dir) / f"synthetic-smear-n{n_fields}-s{size}-seed{seed}"
    marker = root / MARKER_NAME
    try:
        if json.loads(marker.read_text()) == params:
            return root
    except (OSError, ValueError):
        pass
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        _write_coco(tmp, params)
        (tmp / MARKER_NAME).write_text(json.dumps(params))
        try:
            os.rename(tmp, root)
        except OSError:  # another process won the race (or an old tree is there): keep a complete one
            if marker.exists() and json.loads(marker.read_text()) == params:
                return root
            shutil.rmtree(root, ignore_errors=True)
            os.rename(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _write_coco(folder: Path, params: dict) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    labels = ["rbc", "platelet", *WHITE_TYPES]
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(labels)]
    cat_id = {c["name"]: c["id"] for c in categories}
    images, annotations = [], []
    for i in range(params["n_fields"]):
        img, objects = draw_field(np.random.default_rng([params["seed"], i]), params["size"])
        name = f"field-{i:04d}.png"
        img.save(folder / "images" / name, optimize=False, compress_level=1)
        images.append({"id": i + 1, "file_name": name, "width": params["size"], "height": params["size"]})
        for obj in objects:
            x0, y0, x1, y1 = obj["box"]
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": cat_id[obj["label"]],
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    (folder / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                       "categories": categories}))


def write_fields(out: Path, *, n: int = 24, seed: int = 1, size: int = 256) -> None:
    """``n`` fresh fields as a COCO folder (``out/images/field-XXXX.png``, ``out/instances.json``): a seed
    the detector never trained on (the training fields use seed 0), for trying the chain with truth."""
    _write_coco(Path(out), {"n_fields": n, "size": size, "seed": seed, "version": GENERATOR_VERSION})
