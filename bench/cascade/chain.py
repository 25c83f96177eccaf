"""Fields in, one row per detected cell out: the detector, the crops, the classifiers.

Each field is decoded once by the decoder training used (:func:`bench.detection.data.open_field`: EXIF
orientation applied, any mode to RGB, 16-bit rescaled), resized for the detector the way its run resized
training fields (:func:`bench.training.detector.field_tensor`), and its boxes, kept at the
detector's score threshold, are mapped back to the field's own pixels. A box of a typed label
becomes a square crop of the field: the box's longer side plus ``margin`` of it on every side
(or, with ``crop_size``, a fixed side in field pixels: the framing of single-cell images taken at
one magnification, where a cell's size is itself a cue), centred on the box and shifted to stay
inside the field (never padded with black), then made
the classifier's input the way its run decoded images (:func:`bench.data.imagefolder.resize_rgb`)
and normalised with its mean and std. Crops are classified a batch at a time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from bench.cascade.models import Classifier, LoadedDetector
from bench.data.imagefolder import resize_rgb
from bench.data.transforms import Normalize
from bench.detection.data import open_field
from bench.predict.images import member_probs
from bench.predict.tables import prediction_tables

FIELDS_PER_BATCH = 4  # fields per detector forward pass


@dataclass
class ChainResult:
    cells: pd.DataFrame  # one row per kept box: see CELL_COLUMNS, then prob_<class>
    fields: list[str]  # readable fields, relative paths, in order
    sizes: dict[str, tuple[int, int]]  # field -> (width, height)
    unreadable: list[tuple[str, str]]  # (field, reason)
    upsampling: list[float] = field(default_factory=list)  # classifier input side / crop side, per typed cell
    seconds: float = 0.0
    fields_at_cap: list[str] = field(default_factory=list)  # the detector returned its most boxes: maybe cut short


CELL_COLUMNS = ["field", "cell", "xmin", "ymin", "xmax", "ymax", "detector_label", "detector_score", "classified",
                "cell_type", "confidence", "low_confidence", "classifier"]


def square_crop(box: Sequence[float], width: int, height: int, margin: float,
                crop_size: int | None = None) -> tuple[int, int, int, int]:
    """The crop window (left, top, right, bottom) of a box: a square of the box's longer side
    plus ``margin`` of it on each side (or of ``crop_size`` field pixels, at least the box), centred
    on the box, shifted inside the field; a square larger than the field is cut to it."""
    x0, y0, x1, y1 = (float(v) for v in box)
    longer = max(x1 - x0, y1 - y0)
    side = max(float(crop_size), longer) if crop_size else longer * (1.0 + 2.0 * margin)
    side = max(1, int(round(side)))
    left = int(round((x0 + x1) / 2.0 - side / 2.0))
    top = int(round((y0 + y1) / 2.0 - side / 2.0))
    left = min(max(left, 0), max(width - side, 0))
    top = min(max(top, 0), max(height - side, 0))
    return left, top, min(left + side, width), min(top + side, height)


def read_field(path: Path) -> tuple[Image.Image | None, str | None]:
    try:
        return open_field(path), None
    except Exception as exc:  # any decoder error: the field is listed as unreadable
        return None, f"{type(exc).__name__}: {exc}".strip()


@torch.inference_mode()
def detect(detector: LoadedDetector, fields: Sequence[Image.Image], device) -> list[dict]:
    """Per field: boxes (field pixels, xyxy), label names and scores at the detector's per-label thresholds."""
    from bench.detection.fields import field_tensor

    tensors, scales = zip(*(field_tensor(f, detector.input_size) for f in fields))
    outputs = detector.model([t.float().div(255.0).to(device) for t in tensors])
    thresholds = torch.tensor([detector.score_thresholds[lab] for lab in detector.labels])
    out = []
    for p, scale in zip(outputs, scales):
        keep = (p["scores"].cpu() >= thresholds[p["labels"].cpu() - 1]).to(p["scores"].device)
        out.append({"boxes": p["boxes"][keep].cpu().double().numpy() / scale,
                    "labels": [detector.labels[int(i) - 1] for i in p["labels"][keep].cpu().tolist()],
                    "scores": p["scores"][keep].cpu().numpy(),
                    "at_cap": len(p["scores"]) >= detector.max_detections})  # before the threshold: the cap's cut
    return out


def classify_crops(classifier: Classifier, crops: Sequence[Image.Image], device, batch_size: int) -> np.ndarray:
    """Member probabilities (members, crops, classes), ``batch_size`` crops per forward pass."""
    norms = [Normalize(c.mean, c.std, device=device) for c in classifier.checkpoints]
    decodings = sorted({c.decoding for c in classifier.checkpoints}, key=str)
    out = []
    for start in range(0, len(crops), batch_size):
        chunk = crops[start:start + batch_size]
        arrays = {d: [resize_rgb(crop, *d) for crop in chunk] for d in decodings}
        out.append(member_probs(classifier.checkpoints, arrays, norms, device))
    n_cls = len(classifier.class_names)
    return np.concatenate(out, axis=1) if out else np.zeros((len(classifier.checkpoints), 0, n_cls))


def run_chain(files: Sequence[Path], root: Path, detector: LoadedDetector, routes: dict[str, Classifier], *,
              margin: float, batch_size: int, device, crop_size: int | None = None,
              progress: bool = True) -> ChainResult:
    """Every field through the detector and every typed box through its classifier."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    rows: list[dict] = []
    crops: dict[int, list[Image.Image]] = {}  # classifier (by id) -> its crops, in row order
    owners: dict[int, list[int]] = {}  # classifier -> the rows its crops belong to
    fields, sizes, unreadable, upsampling, at_cap = [], {}, [], [], []
    with tqdm(total=len(files), desc="fields", unit="field", disable=not progress, leave=False) as bar:
        for group_start in range(0, len(files), FIELDS_PER_BATCH):
            group = []
            for path in files[group_start:group_start + FIELDS_PER_BATCH]:
                rel = path.relative_to(root).as_posix()
                image, reason = read_field(path)
                if image is None:
                    unreadable.append((rel, reason))
                else:
                    group.append((rel, image))
            if group:
                for (rel, image), found in zip(group, detect(detector, [im for _, im in group], device)):
                    fields.append(rel)
                    sizes[rel] = image.size
                    if found["at_cap"]:
                        at_cap.append(rel)
                    for k, (box, label, score) in enumerate(zip(found["boxes"], found["labels"], found["scores"])):
                        rows.append({"field": rel, "cell": k + 1, **dict(zip(("xmin", "ymin", "xmax", "ymax"),
                                                                             np.round(box, 2).tolist())),
                                     "detector_label": label, "detector_score": round(float(score), 4)})
                        clf = routes.get(label)
                        if clf is not None:
                            window = square_crop(box, *image.size, margin, crop_size)
                            crops.setdefault(id(clf), []).append(image.crop(window))
                            owners.setdefault(id(clf), []).append(len(rows) - 1)
                            upsampling.append(clf.input_size / max(1, window[2] - window[0]))
            bar.update(len(files[group_start:group_start + FIELDS_PER_BATCH]))
    cells = type_cells(pd.DataFrame(rows, columns=CELL_COLUMNS[:8]), routes, crops, owners, device, batch_size)
    return ChainResult(cells, fields, sizes, unreadable, upsampling, time.perf_counter() - start, at_cap)


def type_cells(cells: pd.DataFrame, routes: dict[str, Classifier], crops: dict, owners: dict, device,
               batch_size: int) -> pd.DataFrame:
    """The per-cell table completed: each classifier's crops typed, the other boxes keep their label."""
    cells = cells.astype({"detector_label": object})
    cells["classified"] = False
    cells["cell_type"] = cells["detector_label"]
    cells["confidence"] = np.nan
    cells["low_confidence"] = pd.Series([None] * len(cells), dtype=object)
    cells["classifier"] = ""
    classifiers = {id(c): c for c in routes.values()}
    for clf in classifiers.values():
        for c in clf.class_names:
            cells[f"prob_{c}"] = np.nan
    for key, clf in classifiers.items():
        index = owners.get(key, [])
        probs = classify_crops(clf, crops.get(key, []), device, batch_size)
        table, _ = prediction_tables([str(i) for i in index], probs, clf.class_names, clf.voting, clf.weights,
                                     clf.record)
        cells.loc[index, "classified"] = True
        cells.loc[index, "cell_type"] = table["predicted"].to_numpy()
        cells.loc[index, "confidence"] = table["confidence"].to_numpy()
        cells.loc[index, "low_confidence"] = table["low_confidence"].to_numpy()
        cells.loc[index, "classifier"] = str(clf.source)
        for c in clf.class_names:
            cells.loc[index, f"prob_{c}"] = table[f"prob_{c}"].to_numpy()
    return cells
