"""Detection datasets: COCO JSON, Pascal VOC and a boxes CSV, read into one form, checked.

Every reader returns a :class:`DetectionSet`: the images (path relative to the data root, size,
boxes as pixel ``xmin, ymin, xmax, ymax``, label names as written) and a :class:`AnnotationReport`
counting what was wrong and what was done about it. Bad annotations are never a crash:

- an annotation naming an image that does not exist, or an image that does not decode: the
  image is left out (counted, named in ``report.examples``);
- a zero-area or inverted box (xmax <= xmin or ymax <= ymin): the box is dropped (counted);
- a box partly outside the image: clipped to it (counted); wholly outside: dropped (counted);
- a label no box uses (a COCO category without annotations): reported;
- an image with no boxes is a valid negative and is kept;
- a COCO crowd box (``iscrowd``: many cells under one box) is kept apart as an ignore region
  (``Boxes.ignore``): not trained on or counted, and ignored by the evaluation, as COCO does.

``data.label_map`` renames labels and merges them (``{"neutrophil": "wbc", ...}``); labels are
taken as they are written otherwise. Formats:

- ``data=coco``: ``data.root`` holds the images (``file_name`` relative to it, or under
  ``images/``) and ``data.annotations`` the COCO JSON (default ``<root>/instances.json``);
- ``data=voc``: ``<root>/Annotations/*.xml`` and ``<root>/JPEGImages/``; the official split from
  ``<root>/ImageSets/Main/{train,val,test}.txt`` when present;
- ``data=boxes_csv``: ``data.annotations`` (default ``<root>/annotations.csv``) with columns
  ``image,xmin,ymin,xmax,ymax,label``: pixel or 0-1 fractional coordinates
  (``data.coordinates=auto`` decides from the values and says which in the log).
"""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from bench.data.imagefolder import DataError, to_rgb

log = logging.getLogger(__name__)


@dataclass
class Boxes:
    """One image's objects: ``boxes`` (N, 4) float pixel xyxy, ``labels`` N names."""

    path: str  # relative to the data root
    width: int
    height: int
    boxes: np.ndarray
    labels: list[str]
    split: str | None = None  # an official split (VOC ImageSets), else None
    # COCO crowd regions (iscrowd 1): many cells under one box, not each one drawn. Never trained
    # on or counted; the evaluation ignores predictions inside them (pycocotools' rule).
    ignore: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    ignore_labels: list[str] = field(default_factory=list)


@dataclass
class AnnotationReport:
    """What was wrong with the annotations and what was done, by kind, with a few examples."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, kind: str, example: str) -> None:
        self.counts[kind] += 1
        self.examples.setdefault(kind, [])
        if len(self.examples[kind]) < 3:
            self.examples[kind].append(example)

    def count_lines(self) -> list[str]:
        """What was wrong, by kind: ``N kind (e.g. ...)``."""
        return [f"{n} {kind} (e.g. {', '.join(self.examples[kind])})" for kind, n in self.counts.items()]

    def lines(self) -> list[str]:
        return [*self.notes, *self.count_lines()]


@dataclass
class DetectionSet:
    root: Path
    images: list[Boxes]
    classes: list[str]
    report: AnnotationReport

    def class_counts(self) -> Counter:
        return Counter(label for im in self.images for label in im.labels)


# --------------------------------------------------------------------------- checking
def check_boxes(image: Boxes, report: AnnotationReport) -> Boxes:
    """Drop impossible boxes, clip the ones that leave the image; count both (crowd regions too)."""
    image.boxes, image.labels = _checked(image, image.boxes, image.labels, report, "box(es)")
    image.ignore, image.ignore_labels = _checked(image, image.ignore, image.ignore_labels, report, "crowd region(s)")
    return image


def _checked(image: Boxes, boxes, labels, report: AnnotationReport, what: str) -> tuple[np.ndarray, list]:
    keep_boxes, keep_labels = [], []
    for (x0, y0, x1, y1), label in zip(np.asarray(boxes, float).reshape(-1, 4).tolist(), labels):
        where = f"{image.path} [{x0:.1f}, {y0:.1f}, {x1:.1f}, {y1:.1f}] {label}"
        if not all(np.isfinite([x0, y0, x1, y1])) or x1 <= x0 or y1 <= y0:
            report.add(f"zero-area or inverted {what} dropped", where)
            continue
        cx0, cy0 = min(max(x0, 0.0), image.width), min(max(y0, 0.0), image.height)
        cx1, cy1 = min(max(x1, 0.0), image.width), min(max(y1, 0.0), image.height)
        if cx1 <= cx0 or cy1 <= cy0:
            report.add(f"{what} outside the image dropped", where)
            continue
        if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
            report.add(f"{what} clipped to the image", where)
        keep_boxes.append([cx0, cy0, cx1, cy1])
        keep_labels.append(label)
    return np.asarray(keep_boxes, dtype=np.float32).reshape(-1, 4), keep_labels


EXIF_ORIENTATION = 0x0112
TURNED = (5, 6, 7, 8)  # EXIF orientations that turn the picture a quarter: width and height swap


def open_field(path) -> Image.Image:
    """A field as RGB, the one decoder of every detection path (training, evaluation, the chain, the
    report): the classifiers' :func:`bench.data.imagefolder.to_rgb`, so EXIF orientation is applied,
    16-bit fields are rescaled by their range (``convert("RGB")`` makes them white) and transparency
    lies on white. Boxes are read in the picture as displayed (:func:`_image_size` agrees)."""
    with Image.open(path) as img:
        img.load()
        return to_rgb(img)


def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) as displayed (EXIF orientation applied), from the header; None if it does not open."""
    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            turned = img.getexif().get(EXIF_ORIENTATION) in TURNED
            return img.size[::-1] if turned else img.size
    except Exception:
        return None


def rename_labels(images: list[Boxes], label_map: dict) -> list[Boxes]:
    """``data.label_map`` (or ``--truth-map``) applied to every box and crowd region, in place."""
    for im in images:
        im.labels = [str(label_map.get(label, label)) for label in im.labels]
        im.ignore_labels = [str(label_map.get(label, label)) for label in im.ignore_labels]
    return images


def relabel(dset: DetectionSet, label_map: dict) -> DetectionSet:
    """A read set with its labels renamed (its classes listed again)."""
    images = rename_labels(dset.images, dict(label_map))
    return DetectionSet(dset.root, images, sorted({lab for im in images for lab in im.labels}), dset.report)


def finish(root: Path, images: list[Boxes], report: AnnotationReport, label_map: dict | None,
           declared: list[str] | None = None) -> DetectionSet:
    """Rename / merge labels, check boxes, list the classes; images that do not decode are left out."""
    label_map = dict(label_map or {})
    out = [check_boxes(im, report) for im in rename_labels(images, label_map)]
    used = sorted({label for im in out for label in im.labels})
    for name in declared or []:
        name = str(label_map.get(name, name))
        if name not in used:
            report.add("label(s) with no box", name)
    if len(used) < 1:
        raise DataError(f"{root}: no usable box in any image ({'; '.join(report.lines()) or 'no annotations'}).")
    for kind, n in report.counts.items():
        log.warning("annotations: %d %s (e.g. %s)", n, kind, ", ".join(report.examples[kind]))
    return DetectionSet(root, out, used, report)


# --------------------------------------------------------------------------- COCO
def read_coco(root, annotations=None, label_map=None) -> DetectionSet:
    root = Path(root).expanduser()
    ann_path = Path(annotations).expanduser() if annotations else root / "instances.json"
    try:
        coco = json.loads(ann_path.read_text())
        cats = {c["id"]: str(c["name"]) for c in coco["categories"]}
        entries = coco["images"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"data.annotations={ann_path}: not a readable COCO file ({type(exc).__name__}: {exc}); it "
                        "needs 'images', 'annotations' and 'categories' lists.") from exc
    _check_unique_ids(entries, ann_path)
    report = AnnotationReport()
    by_image: dict[int, list] = {}
    for a in coco.get("annotations", []):
        if a.get("category_id") not in cats:
            report.add("box(es) with an unknown category dropped", str(a.get("id")))
            continue
        by_image.setdefault(a.get("image_id"), []).append(a)
    images = []
    for entry in entries:
        rel = str(entry["file_name"])
        path = root / rel if (root / rel).is_file() else root / "images" / rel
        size = _image_size(path)
        if size is None:
            report.add("image(s) missing or unreadable, left out", rel)
            continue
        rel = path.relative_to(root).as_posix()
        anns = by_image.get(entry["id"], [])
        cells = [a for a in anns if not a.get("iscrowd", 0)]
        crowds = [a for a in anns if a.get("iscrowd", 0)]
        images.append(Boxes(rel, size[0], size[1], _xyxy(cells), [cats[a["category_id"]] for a in cells],
                            ignore=_xyxy(crowds), ignore_labels=[cats[a["category_id"]] for a in crowds]))
    known = {e["id"] for e in entries}
    for image_id in set(by_image) - known:
        report.add("annotation(s) naming a missing image entry dropped", str(image_id))
    return finish(root, images, report, label_map, declared=list(cats.values()))


def _xyxy(annotations: list) -> np.ndarray:
    """COCO's boxes (x, y, width, height) as (xmin, ymin, xmax, ymax)."""
    return np.asarray([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                       for a in annotations], dtype=np.float32).reshape(-1, 4)


def _check_unique_ids(entries: list, ann_path: Path) -> None:
    """Two image entries with one id would share one set of boxes (the second image's own lost):
    an error naming both files, never a guess."""
    first: dict = {}
    for entry in entries:
        image_id, name = entry.get("id"), entry.get("file_name")
        if image_id in first:
            raise DataError(f"data.annotations={ann_path}: image id {image_id} is given to two images, "
                            f"{first[image_id]} and {name}; each annotation names its image by id, so their boxes "
                            "cannot be told apart. Give every entry of 'images' its own id (and fix the "
                            "annotations' image_id to match).")
        first[image_id] = name


# --------------------------------------------------------------------------- Pascal VOC
def read_voc(root, label_map=None) -> DetectionSet:
    root = Path(root).expanduser()
    ann_dir = root / "Annotations"
    if not ann_dir.is_dir():
        raise DataError(f"data.root={root} has no Annotations/ folder; data=voc expects Annotations/*.xml and "
                        "JPEGImages/ (the Pascal VOC layout).")
    official = {}
    for split in ("train", "val", "test"):
        listing = root / "ImageSets" / "Main" / f"{split}.txt"
        if listing.is_file():
            official.update({line.split()[0]: split for line in listing.read_text().splitlines() if line.strip()})
    report = AnnotationReport()
    if official:
        report.notes.append(f"the official split of ImageSets/Main ({len(official)} images)")
    images = []
    for xml in sorted(ann_dir.glob("*.xml")):
        try:
            tree = ET.parse(xml).getroot()
            name = tree.findtext("filename") or f"{xml.stem}.jpg"
        except ET.ParseError as exc:
            report.add("annotation file(s) that do not parse, left out", f"{xml.name} ({exc})")
            continue
        path = root / "JPEGImages" / name
        size = _image_size(path)
        if size is None:
            report.add("image(s) missing or unreadable, left out", f"JPEGImages/{name}")
            continue
        boxes, labels = [], []
        for obj in tree.iter("object"):
            bb = obj.find("bndbox")
            try:
                boxes.append([float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")])
                labels.append(str(obj.findtext("name")).strip())
            except (AttributeError, TypeError, ValueError):
                report.add("object(s) without a readable box dropped", xml.name)
        if official and xml.stem not in official:
            report.add("image(s) in no ImageSets/Main list, left out", xml.stem)
            continue
        images.append(Boxes(f"JPEGImages/{name}", size[0], size[1], np.asarray(boxes, np.float32).reshape(-1, 4),
                            labels, official.get(xml.stem)))
    return finish(root, images, report, label_map)


# --------------------------------------------------------------------------- boxes CSV
def read_boxes_csv(root, annotations=None, label_map=None, coordinates: str = "auto") -> DetectionSet:
    root = Path(root).expanduser()
    path = Path(annotations).expanduser() if annotations else root / "annotations.csv"
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"data.annotations={path}: cannot read it ({exc}).") from exc
    need = ["image", "xmin", "ymin", "xmax", "ymax", "label"]
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise DataError(f"{path} lacks the column(s) {missing}; expected {', '.join(need)}.")
    report = AnnotationReport()
    fractional = coordinate_kind(table[["xmin", "ymin", "xmax", "ymax"]], coordinates, path, report)
    images = []
    for name, rows in table.groupby("image", sort=True):
        img_path = root / str(name) if (root / str(name)).is_file() else root / "images" / str(name)
        size = _image_size(img_path)
        if size is None:
            report.add("image(s) missing or unreadable, left out", str(name))
            continue
        boxes = rows[["xmin", "ymin", "xmax", "ymax"]].to_numpy(np.float32)
        if fractional:
            boxes = boxes * np.array([size[0], size[1], size[0], size[1]], dtype=np.float32)
        images.append(Boxes(img_path.relative_to(root).as_posix(), size[0], size[1], boxes,
                            [str(v) for v in rows["label"]]))
    return finish(root, images, report, label_map)


# A row of fractions never reaches twice the image size, and a row of pixels whose every coordinate
# is at most 2 is a box of two pixels in the field's corner: above this the row is pixels.
FRACTION_LIMIT = 2.0


def coordinate_kind(coords: pd.DataFrame, coordinates: str, path: Path, report: AnnotationReport) -> bool:
    """Whether the file's boxes are fractions of the image size (else pixels), decided for the
    whole file. ``auto``: each usable row votes (zero-area and unreadable rows are dropped anyway):
    every coordinate <= 2 is a row of fractions, any above is a row of pixels. One kind: that kind,
    fraction rows with a value just above 1 (a rounding slip, a box past the edge) named and
    clipped; both kinds: an error with the counts, never a mix."""
    values = coords.to_numpy(float)
    usable = np.isfinite(values).all(axis=1) & (values[:, 2] > values[:, 0]) & (values[:, 3] > values[:, 1])
    largest = np.where(usable, np.abs(np.where(np.isfinite(values), values, 0.0)).max(axis=1), np.nan)
    pixel_rows = np.flatnonzero(largest > FRACTION_LIMIT)
    fraction_rows = np.flatnonzero(largest <= FRACTION_LIMIT)
    if coordinates == "auto" and len(pixel_rows) and len(fraction_rows):
        raise DataError(
            f"data.annotations={path} mixes two kinds of coordinates: {len(fraction_rows)} row(s) have every "
            f"coordinate <= {FRACTION_LIMIT:g} (fractions of the image size; e.g. line(s) "
            f"{_lines(fraction_rows)}) and {len(pixel_rows)} row(s) have larger ones (pixels; e.g. line(s) "
            f"{_lines(pixel_rows)}). Reading either kind as the other would turn its boxes into wrong ones. "
            "Write every row in one kind, or say which the file holds with data.coordinates=fraction or "
            "data.coordinates=pixel (the other rows are then clipped or dropped, and counted).")
    fractional = coordinates == "fraction" or (coordinates == "auto" and not len(pixel_rows))
    if fractional:
        for row in np.flatnonzero(largest > 1.0):
            report.add("row(s) with a coordinate above 1 read as fractions (clipped to the image)",
                       f"line {row + 2}: {', '.join(f'{k}={v:g}' for k, v in coords.iloc[row].items() if v > 1)}")
    report.notes.append(f"{path.name}: {'fractions of the image size' if fractional else 'pixel'} coordinates"
                        + (" (detected)" if coordinates == "auto" else ""))
    log.info("annotations: %s", report.notes[-1])
    return fractional


def _lines(rows: np.ndarray) -> str:
    """File line numbers of table rows (the header is line 1), the first three."""
    return ", ".join(str(r + 2) for r in rows[:3]) + (", ..." if len(rows) > 3 else "")


def read_detection_set(data_cfg, cache_dir=None) -> DetectionSet:
    """The dataset ``data_cfg.kind`` names (coco, voc, boxes_csv, synthetic_smear)."""
    kind = data_cfg.kind
    label_map = data_cfg.get("label_map")
    if kind == "synthetic_smear":
        from bench.detection.synthetic import synthetic_smear_root

        root = synthetic_smear_root(Path(cache_dir or ".cache/bench") / "datasets",
                                    n_fields=data_cfg.get("smear_n_fields", 120), size=data_cfg.get("smear_size", 256),
                                    seed=data_cfg.get("synthetic_seed", 0))
        return read_coco(root, None, label_map)
    if not data_cfg.root or data_cfg.root == "???":
        raise DataError(f"data={kind} needs data.root=PATH (the folder of the images).")
    if kind == "coco":
        return read_coco(data_cfg.root, data_cfg.get("annotations"), label_map)
    if kind == "voc":
        return read_voc(data_cfg.root, label_map)
    if kind == "boxes_csv":
        return read_boxes_csv(data_cfg.root, data_cfg.get("annotations"), label_map,
                              data_cfg.get("coordinates", "auto"))
    raise DataError(f"data.kind={kind!r} is not a detection dataset (coco, voc, boxes_csv, synthetic_smear).")
