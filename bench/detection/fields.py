"""A detector run's fields: split, decoded, batched (the data stages of :mod:`bench.training.detector`).

- :func:`split_detection_set`: train / val / test at image level, stratified on the rarest class
  in each image, identical bytes kept together, written once as the experiment's manifest (an
  official VOC split is used as it is, and written as the manifest too, so the chain can tell
  which fields the detector saw). A split with no field, or no box, is an error naming where the
  split came from (the VOC list, the manifest): scored, it would read as mAP 0.0 and a perfect
  count error of 0.0.
- a label on fewer than 3 fields is named with its files and the ``data.label_map`` fix (a typo
  such as ``wbc`` among 4,887 ``WBC`` boxes makes a class): a preflight warning, and the problem
  it is when the fields cannot be split because of it;
- :func:`decode`: every field decoded once (:func:`bench.detection.data.open_field`) and resized
  so its longer side is ``data.image_size``, boxes scaled with it; a field that does not decode
  is left out and listed (the run's ``excluded.csv``), never a crash without its name.
- :func:`batches`: float images and targets, training batches flipped (and zoomed) with their boxes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench import runs
from bench.data.build import SPLIT_NAMES
from bench.data.imagefolder import DataError
from bench.detection.data import Boxes, DetectionSet, open_field

log = logging.getLogger("bench.train")

RARE, NO_BOXES = "(rare)", "(no boxes)"


def split_detection_set(dset: DetectionSet, cfg, exp_dir: Path) -> dict[str, list[Boxes]]:
    """train / val / test images; the experiment's manifest when there is one (same rules as
    classification: written once, reused by every detector, identical bytes share a split)."""
    from bench.data.split import SPLITS, load_or_create_manifest

    manifest_path = Path(exp_dir) / "manifest.csv"
    if all(im.split for im in dset.images):  # an official split (VOC ImageSets)
        splits = {s: [im for im in dset.images if im.split == s] for s in SPLITS}
        check_splits(splits, official_lists(dset.root))
        if not manifest_path.exists():  # the record of which fields trained the detector
            rows = [(im.path, _sha1(dset.root / im.path), "(official)", im.split) for im in dset.images]
            runs.write_csv_atomic(manifest_path, pd.DataFrame(rows, columns=["path", "sha1", "label", "split"]))
        return splits
    problem = rare_split_problem(dset)
    if problem:
        raise DataError(problem)
    table = pd.DataFrame({"path": [im.path for im in dset.images],
                          "sha1": [_sha1(dset.root / im.path) for im in dset.images], "label": strata(dset)})
    manifest = load_or_create_manifest(manifest_path, table, seed=cfg.data.split_seed,
                                       fractions=cfg.data.split_fractions, rounding=cfg.data.split_rounding)
    where = dict(zip(manifest["path"], manifest["split"]))
    splits = {s: [im for im in dset.images if where.get(im.path) == s] for s in SPLITS}
    check_splits(splits, {s: f"the experiment's split {manifest_path}" for s in SPLITS})
    return splits


# A label on fewer fields than this cannot reach train, validation and test; among thousands of
# boxes it is most often a typo (``wbc`` for ``WBC``) that would become a class of its own.
MIN_LABEL_FIELDS = 3


def rare_labels(dset: DetectionSet) -> dict[str, list[str]]:
    """Labels on fewer than :data:`MIN_LABEL_FIELDS` fields, with those fields."""
    fields_of: dict[str, list[str]] = {}
    for im in dset.images:
        for label in dict.fromkeys(im.labels):
            fields_of.setdefault(label, []).append(im.path)
    return {label: paths for label, paths in sorted(fields_of.items()) if len(paths) < MIN_LABEL_FIELDS}


def rare_labels_message(dset: DetectionSet, rare: dict[str, list[str]], stops: bool) -> str:
    """Names each rare label, its boxes and fields, the label it may be a typo of, and the fix."""
    import difflib

    boxes = dset.class_counts()
    parts, fixes = [], []
    for label, paths in rare.items():
        others = [c for c in dset.classes if c not in rare]
        near = [c for c in others if c.lower() == label.lower()] or difflib.get_close_matches(label, others, n=1)
        parts.append(f"{label!r}: {boxes[label]} box(es) on {len(paths)} field(s) ({', '.join(paths[:3])})"
                     + (f", like {near[0]!r}" if near else ""))
        if near:
            fixes.append(f"{label}: {near[0]}")
    example = "{" + ", ".join(fixes) + "}" if fixes else "{" + f"{next(iter(rare))}: <another label>" + "}"
    return (f"label(s) on fewer than {MIN_LABEL_FIELDS} fields, "
            + ("too few to split into training, validation and test" if stops else "each a class of its own")
            + f": {'; '.join(parts)}. A typo in a label makes a new class; rename or merge it with "
            f"'++data.label_map={example}' (the quotes for the shell; ++ adds to a map the experiment already "
            "sets) or correct the annotation files.")


def _rarest(dset: DetectionSet) -> list[str]:
    """Each image's rarest class by box count (images without boxes: ``(no boxes)``)."""
    counts = dset.class_counts()
    return [min(im.labels, key=lambda c: (counts[c], c)) if im.labels else NO_BOXES for im in dset.images]


def strata(dset: DetectionSet) -> list[str]:
    """Each image's stratum: its rarest class; strata of fewer than 3 images share one, ``(rare)``."""
    rarest = _rarest(dset)
    sizes = Counter(rarest)
    return [s if sizes[s] >= 3 else RARE for s in rarest]


def rare_split_problem(dset: DetectionSet) -> str | None:
    """Why the fields cannot be split, when the ``(rare)`` stratum has 1 or 2 images: the labels that
    made it, named (most often a typo), with the fix; None when they can (or the split is official)."""
    merged = strata(dset)
    if all(im.split for im in dset.images) or not 0 < merged.count(RARE) < 3:
        return None
    labels = sorted({r for r, m in zip(_rarest(dset), merged) if m == RARE} - {NO_BOXES})
    if not labels:
        return (f"{merged.count(RARE)} field(s) without any box, too few to split into training, validation and "
                "test: add negatives (at least 3) or remove them from the annotations.")
    return rare_labels_message(dset, {lab: [im.path for im in dset.images if lab in im.labels] for lab in labels},
                               stops=True)


def official_lists(root: Path) -> dict[str, str]:
    """Where each split of a VOC folder comes from, for messages: its list file, and whether it is there."""
    out = {}
    for split in SPLIT_NAMES:
        listing = Path(root) / "ImageSets" / "Main" / f"{split}.txt"
        out[split] = f"{listing} ({'it lists no readable field' if listing.is_file() else 'missing'})"
    return out


def check_splits(splits: dict[str, list[Boxes]], source: dict[str, str]) -> None:
    """Every split holds a field and a box: an empty one scores as mAP 0.0 and count error 0.0."""
    for split, images in splits.items():
        if not images or not any(len(im.labels) for im in images):
            what = "no field" if not images else f"{len(images)} field(s) but no box"
            raise DataError(
                f"the {SPLIT_NAMES[split]} split has {what}: {source[split]}. With nothing to score, its mAP "
                "would read 0.0 and its count error a perfect 0.0. A detector needs training, validation and test "
                "fields with boxes: complete the list (VOC: ImageSets/Main/train.txt, val.txt and test.txt; or "
                "remove ImageSets/Main to let the harness split the fields), or start a new experiment_name so the "
                "fields are split afresh.")


def _sha1(path: Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def decode(dset: DetectionSet, images: list[Boxes], size: int | None,
           excluded: list | None = None) -> list[tuple[torch.Tensor, Boxes]]:
    """Each image as a uint8 (3, H, W) tensor with the longer side ``size`` (native when None), and
    its boxes scaled the same way. A field that does not decode (a truncated file) is left out,
    counted in the annotation report and added to ``excluded`` as (path, reason)."""
    out = []
    for im in images:
        try:
            field = open_field(dset.root / im.path)
        except Exception as exc:  # any decoder error: the field is named and left out
            reason = f"does not decode ({type(exc).__name__}: {exc})"
            log.warning("detection data: %s %s; left out", im.path, reason)
            dset.report.add("image(s) that do not decode, left out", im.path)
            if excluded is not None:
                excluded.append((im.path, reason))
            continue
        tensor, scale = field_tensor(field, size)
        out.append((tensor, dataclasses.replace(im, width=tensor.shape[2], height=tensor.shape[1],
                                                boxes=im.boxes * scale, labels=list(im.labels),
                                                ignore=im.ignore * scale, ignore_labels=list(im.ignore_labels))))
    return out


def field_tensor(pil, size: int | None) -> tuple[torch.Tensor, float]:
    """An RGB field as a uint8 (3, H, W) tensor with its longer side ``size`` (bilinear; native when
    None) and the scale applied: the one rule for training, evaluation and the cascade."""
    from PIL import Image

    scale = 1.0 if not size else size / max(pil.size)
    if scale != 1.0:
        pil = pil.resize((max(1, round(pil.size[0] * scale)), max(1, round(pil.size[1] * scale))), Image.BILINEAR)
    return torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy()).permute(2, 0, 1), scale


def box_augment(scale_jitter=None):
    """Training augmentation of a field and its boxes with ``torchvision.transforms.v2``: flips, and
    with ``scale_jitter=[lo, hi]`` a zoom by a factor in that range about the centre on the same
    canvas (the detector resizes every field to one size, so resizing alone would be undone):
    boxes move with the pixels, are clipped to the field, and dropped when little is left."""
    from torchvision.transforms import v2

    steps = [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
    if scale_jitter:
        lo, hi = (float(v) for v in scale_jitter)
        steps += [v2.RandomAffine(degrees=0.0, scale=(lo, hi)), v2.ClampBoundingBoxes(),
                  v2.SanitizeBoundingBoxes(min_size=2.0, labels_getter=lambda inputs: inputs[2])]
    return v2.Compose(steps)


def batches(samples, classes: list[str], batch_size: int, *, shuffle: bool, augment: bool, seed: int, epoch: int,
            max_batches: int | None = None, scale_jitter=None):
    """Lists of float images in [0, 1] and targets; training batches augmented box-aware
    (:func:`box_augment`), per (seed, epoch)."""
    from torchvision import tv_tensors

    index = {c: i + 1 for i, c in enumerate(classes)}
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(samples), generator=gen).tolist() if shuffle else list(range(len(samples)))
    transform = box_augment(scale_jitter)
    n_batches = -(-len(order) // batch_size)
    for b in range(min(n_batches, max_batches or n_batches)):
        images, targets = [], []
        for i in order[b * batch_size:(b + 1) * batch_size]:
            tensor, im = samples[i]
            boxes = tv_tensors.BoundingBoxes(torch.as_tensor(im.boxes, dtype=torch.float32), format="XYXY",
                                             canvas_size=tuple(tensor.shape[1:]))
            image = tv_tensors.Image(tensor)
            labels = torch.as_tensor([index[c] for c in im.labels], dtype=torch.int64)
            if augment:
                torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
                image, boxes, labels = transform(image, boxes, labels)
            images.append(image.float() / 255.0)
            targets.append({"boxes": boxes.as_subclass(torch.Tensor), "labels": labels})
        yield images, targets
