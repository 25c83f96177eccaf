"""From ``cfg.data`` to three in-memory splits: the one entry point the trainer calls."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.data.imagefolder import DataError, scan_imagefolder
from bench.data.split import SPLITS, conflicting_duplicates, load_or_create_manifest, manifest_filename
from bench.data.store import (MappedImages, SplitData, choose_store_mode, file_hashes, load_or_decode,
                              to_split)
from bench.config import DATA_KINDS  # the choices, defined once

log = logging.getLogger(__name__)


@dataclass
class DataBundle:
    class_names: list[str]
    splits: dict[str, SplitData]
    root: str  # where the images came from (for messages and records)
    # Files left out at start with the reason (corrupt, duplicate with conflicting labels).
    excluded: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["path", "reason"]))
    # What the data told us that a user must hear (a class with no readable image, ...).
    warnings: list[str] = field(default_factory=list)
    # data.stain: the method, its target (fitted on training images) and the images kept as decoded.
    stain: dict | None = None
    # data=multi_source: the sources in order (an image's source is the first part of its path).
    sources: list[str] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_left_out(self) -> int:
        """Files of ``excluded`` that are in no split (the rest train, e.g. conflicting duplicates)."""
        used = {p for split in self.splits.values() for p in split.paths}
        return int(sum(p not in used for p in self.excluded["path"]))

    @property
    def n_train_only(self) -> int:
        """Files of ``excluded`` that are in a split all the same: identical bytes under two labels,
        listed so they are seen, kept in train (never scored)."""
        return len(self.excluded) - self.n_left_out

    def summary(self) -> str:
        counts = ", ".join(f"{s} {len(self.splits[s])}" for s in SPLITS)
        # Train-only duplicates are in the counts above: calling them excluded would count them twice.
        return (f"{self.num_classes} classes, {counts}, excluded {self.n_left_out}, train-only duplicates "
                f"{self.n_train_only} ({self.root})")


def build_data(data_cfg, *, image_size: int, exp_dir: Path, cache_dir: str | None) -> DataBundle:
    """Load the dataset named by ``data_cfg.kind`` at ``image_size`` pixels."""
    # Class selection (data.classes / data.class_map) happens after the split, so every
    # subset of the classes sees the same images in the same splits (two-level classifier).
    bundle = _build(data_cfg, image_size=image_size, exp_dir=exp_dir, cache_dir=cache_dir)
    bundle = select_classes(bundle, data_cfg.classes, data_cfg.class_map)
    check_splits_not_empty(bundle, data_cfg, exp_dir)
    if data_cfg.get("stain", "none") != "none":
        bundle = normalise_stain(bundle, data_cfg.stain, cache_dir)
    return bundle


def normalise_stain(bundle: DataBundle, method: str, cache_dir: str | None) -> DataBundle:
    """Every split normalised to ``method``'s target fitted on the training split (after the class
    selection: the images this run trains on), never on validation or test images."""
    from bench.data.stain import fit_target, normalise_images

    normalizer = fit_target(method, bundle.splits["train"].images)
    splits, kept = {}, {}
    for split, data in bundle.splits.items():
        arr, kept[split] = normalise_images(data.images, normalizer, cache_dir, label=split)
        if isinstance(data.images, MappedImages):
            splits[split] = SplitData(MappedImages(arr, range(len(arr))), data.labels, data.paths)
        else:
            splits[split] = to_split(arr, data.labels.cpu().numpy(), data.paths)
    warnings = list(bundle.warnings)
    if any(kept.values()):
        counts = ", ".join(f"{s} {n}" for s, n in kept.items() if n)
        warnings.append(f"data.stain={method}: {sum(kept.values())} image(s) could not be normalised (blank or "
                        f"unstained: {counts}) and were kept as decoded.")
        log.warning("%s", warnings[-1])
    log.info("data.stain=%s: target fitted on %d training image(s)", method, normalizer.target["fit_images"])
    return DataBundle(bundle.class_names, splits, bundle.root, bundle.excluded, warnings, sources=bundle.sources,
                      stain={**normalizer.record, "kept_as_decoded": kept})


SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test"}


def check_splits_not_empty(bundle: DataBundle, data_cfg, exp_dir: Path) -> None:
    """A split without an image would be scored as a number (an accuracy of nothing): an error
    naming the split and where it came from (the experiment's manifest, an official file)."""
    for split in SPLITS:
        if len(bundle.splits[split]):
            continue
        if data_cfg.kind == "bloodmnist":
            source = f"the official split of the BloodMNIST file under {data_cfg.root}"
        else:
            options = dict(split_mode=data_cfg.split_mode, n_folds=data_cfg.n_folds, fold=data_cfg.fold,
                           rounding=data_cfg.split_rounding, fractions=list(data_cfg.split_fractions),
                           **_test_source(data_cfg))
            source = f"the experiment's split {Path(exp_dir) / manifest_filename(**options)}"
        raise DataError(
            f"the {SPLIT_NAMES[split]} split has no image ({source}"
            + (", after data.classes / data.class_map" if data_cfg.classes or data_cfg.class_map else "")
            + "). Scored, it would read as a number measured on nothing. Use a new experiment_name=... to split "
            "the images afresh (an edited or foreign manifest is kept as it is), or check data.classes.")


def geometry_of(data_cfg) -> tuple:
    """``(data.geometry, data.crop_fraction)``, or ``("resize",)``: a plain resize has no crop."""
    if data_cfg.geometry == "resize":
        return ("resize",)
    return (data_cfg.geometry, float(data_cfg.crop_fraction))


def _build(data_cfg, *, image_size: int, exp_dir: Path, cache_dir: str | None) -> DataBundle:
    kind = data_cfg.kind
    if kind == "bloodmnist":
        if data_cfg.split_mode != "holdout":
            raise DataError("data=bloodmnist has official splits; cross-validation (data.split_mode="
                            f"{data_cfg.split_mode}) needs data=imagefolder (or synthetic).")
        return _bloodmnist(data_cfg, image_size)
    if kind == "synthetic":
        from bench.data.synthetic import synthetic_root

        root = synthetic_root(
            Path(cache_dir or ".cache/bench") / "datasets",
            n_per_class=data_cfg.synthetic_n_per_class,
            image_size=data_cfg.synthetic_size,
            seed=data_cfg.synthetic_seed,
        )
        return _imagefolder(root, data_cfg, image_size, exp_dir, cache_dir)
    if kind == "multi_source":
        return _multi_source(data_cfg, image_size, exp_dir, cache_dir)
    if kind == "imagefolder":
        if not data_cfg.root:
            raise DataError("data=imagefolder needs data.root=PATH: a folder with one sub-folder per class.")
        return _imagefolder(Path(data_cfg.root).expanduser(), data_cfg, image_size, exp_dir, cache_dir)
    raise DataError(f"data.kind={kind!r} is not one of {', '.join(DATA_KINDS)}.")


def _imagefolder(root: Path, data_cfg, image_size: int, exp_dir: Path, cache_dir) -> DataBundle:
    records, class_names = scan_imagefolder(root)
    table = pd.DataFrame({"path": [r.path for r in records], "label": [r.label for r in records]})
    from bench.data.imagefolder import class_folders_without_images

    empty = class_folders_without_images(root)
    warnings = [f"folder(s) {', '.join(repr(e) for e in empty)} under {root} hold no image files and are not "
                "classes of this run."] if empty else []
    for w in warnings:
        log.warning("%s", w)
    return _from_table(table, [root / r.path for r in records], class_names, str(root), data_cfg, image_size,
                       exp_dir, cache_dir, warnings=warnings)


def _multi_source(data_cfg, image_size: int, exp_dir: Path, cache_dir) -> DataBundle:
    from bench.data.sources import scan_sources

    table, files, class_names, left_out, warnings = scan_sources(data_cfg)
    root = "; ".join(f"{k}={v}" for k, v in dict(data_cfg.sources).items())
    return _from_table(table, files, class_names, root, data_cfg, image_size, exp_dir, cache_dir,
                       warnings=warnings, excluded=left_out)


def _from_table(table: pd.DataFrame, files: list[Path], class_names: list[str], root: str, data_cfg,
                image_size: int, exp_dir: Path, cache_dir, *, warnings: list[str],
                excluded: pd.DataFrame | None = None) -> DataBundle:
    """Decode ``files`` (rows of ``table``: path, label, and source for multi-source data), leave out what
    cannot be scored, split by the experiment's manifest, and build the splits."""
    mode = choose_store_mode(data_cfg.store, len(files), image_size, have_store_file=bool(cache_dir))
    if mode == "mmap" and not cache_dir:
        raise DataError("data.store=mmap reads the images from the decoded-image store file, which lives under "
                        "paths.cache_dir; set paths.cache_dir=PATH or data.store=memory.")
    images, reasons = load_or_decode(
        files, image_size, Path(cache_dir) if cache_dir else None, workers=data_cfg.decode_workers,
        geometry=geometry_of(data_cfg),
    )
    ok = np.array([r is None for r in reasons])
    failed = pd.DataFrame({"path": table["path"][~ok].tolist(), "reason": [r for r in reasons if r is not None]})
    for _, row in failed.iterrows():
        log.warning("excluded %s: %s", row.path, row.reason)
    excluded = pd.concat([f for f in (excluded, failed) if f is not None and len(f)] or [failed], ignore_index=True)
    warnings = warnings + _unusable_classes(table, ok, class_names)
    dead = set(class_names) - set(table["label"][ok])
    class_names = [c for c in class_names if c not in dead]
    if len(class_names) < 2:
        raise DataError(f"data.root={root!r}: {len(class_names)} class(es) with readable images "
                        f"({', '.join(class_names) or 'none'}); a classifier needs at least 2. {' '.join(warnings)}")
    row_of = {p: i for i, p in enumerate(table["path"])}
    table = table[ok].copy()
    table["sha1"] = file_hashes([f for f, good in zip(files, ok) if good], cache_dir)
    table, excluded = _leave_out_unscorable(table, excluded, data_cfg)
    split_options = dict(split_mode=data_cfg.split_mode, n_folds=data_cfg.n_folds, fold=data_cfg.fold,
                         rounding=data_cfg.split_rounding, **_test_source(data_cfg))
    manifest = load_or_create_manifest(
        Path(exp_dir) / manifest_filename(**split_options, fractions=list(data_cfg.split_fractions)), table,
        seed=data_cfg.split_seed, fractions=data_cfg.split_fractions, **split_options,
    )
    class_index = {c: i for i, c in enumerate(class_names)}
    splits = {}
    for split in SPLITS:
        part = manifest[manifest["split"] == split]
        rows = [row_of[p] for p in part["path"]]
        labels, paths = [class_index[c] for c in part["label"]], part["path"].tolist()
        if mode == "mmap":
            splits[split] = SplitData(MappedImages(images, rows), torch.as_tensor(labels, dtype=torch.long), paths)
        else:
            splits[split] = to_split(images[rows], labels, paths)
    if mode == "mmap":
        log.info("images are read from the memory-mapped store batch by batch (data.store=%s)", data_cfg.store)
    sources = list(dict.fromkeys(table["source"])) if "source" in table else None
    return DataBundle(class_names, splits, root, excluded, warnings, sources=sources)


def _test_source(data_cfg) -> dict:
    """``{"test_source": NAME}`` for leave_one_source_out (it names the manifest), else nothing."""
    if data_cfg.split_mode != "leave_one_source_out":
        return {}
    from bench.data.sources import check_test_source

    check_test_source(list(data_cfg.sources or {}), data_cfg.get("test_source"))
    return {"test_source": str(data_cfg.test_source)}


def _leave_out_unscorable(table: pd.DataFrame, excluded: pd.DataFrame, data_cfg) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Identical bytes under two labels stay in train only (listed); with a source held out, copies of its
    images in the other sources are left out entirely (trained on, they would be test images in training)."""
    conflicts = conflicting_duplicates(table)
    if len(conflicts):
        log.warning(
            "%d file(s) have identical bytes under different labels; kept in train only, never in val/test: %s",
            len(conflicts), ", ".join(conflicts["path"].head(6)),
        )
        excluded = pd.concat(
            [excluded, pd.DataFrame({"path": conflicts["path"], "reason": "identical bytes under another label: "
                                     "kept out of validation and test"})],
            ignore_index=True,
        )
    if data_cfg.split_mode == "leave_one_source_out":
        from bench.data.sources import held_out_copies

        copies = held_out_copies(table, str(data_cfg.test_source))
        if copies.any():
            log.warning("%d image(s) of the training sources are copies of held-out %s images; left out",
                        int(copies.sum()), data_cfg.test_source)
            excluded = pd.concat([excluded, pd.DataFrame({
                "path": table["path"][copies], "reason": f"identical bytes to an image of the held-out source "
                                                         f"{data_cfg.test_source}: left out of training"})],
                ignore_index=True)
            table = table[~copies]
    return table, excluded


def _unusable_classes(table: pd.DataFrame, ok: np.ndarray, class_names: list[str]) -> list[str]:
    """Warnings (also logged) for classes whose every file failed to decode: they are left out of the
    classes everywhere (not kept as a class with no images: an extra output with 0.0 accuracy)."""
    warnings = []
    readable = set(table["label"][ok])
    for c in class_names:
        if c not in readable:
            n = int((table["label"] == c).sum())
            warnings.append(f"class {c!r}: none of its {n} file(s) could be decoded (excluded.csv says why), so it "
                            "is left out of the classes; fix or replace the files to train on it.")
    for w in warnings:
        log.warning("%s", w)
    return warnings


def _bloodmnist(data_cfg, image_size: int) -> DataBundle:
    import torch
    import torch.nn.functional as F

    from bench.data.bloodmnist import BLOODMNIST_CLASSES, load_bloodmnist

    if not data_cfg.root:
        raise DataError("data=bloodmnist needs data.root=PATH: the folder holding bloodmnist_<size>.npz.")
    arrays = load_bloodmnist(data_cfg.root, data_cfg.bloodmnist_size, download=data_cfg.download)
    splits = {}
    for split in SPLITS:
        images, labels = arrays[split]
        data = to_split(images, labels, [f"{split}/{i:06d}" for i in range(len(labels))])
        if data.images.shape[-1] != image_size:
            # Official files come in fixed sizes; resize the batch once (antialiased bilinear).
            resized = F.interpolate(
                data.images.float(), size=(image_size, image_size), mode="bilinear", antialias=True,
                align_corners=False,
            )
            data.images = resized.round().clamp(0, 255).to(torch.uint8)
        splits[split] = data
    return DataBundle(list(BLOODMNIST_CLASSES), splits, str(data_cfg.root))


def select_classes(bundle: DataBundle, classes=None, class_map=None) -> DataBundle:
    """Keep only ``classes`` (None: all) and rename them by ``class_map`` (classes mapped to the
    same name become one class). Images of the other classes are added to ``excluded`` with
    the reason, so runs report how many were left out. New class order: the dataset's order
    of each new class's first member."""
    if not classes and not class_map:
        return bundle
    import torch

    names = list(bundle.class_names)
    keep = list(classes) if classes else names
    mapping = dict(class_map or {})
    unknown = sorted({c for c in [*keep, *mapping] if c not in names})
    if unknown:
        raise DataError(f"data.classes / data.class_map name class(es) {unknown} that the dataset does not have; "
                        f"its classes are {names}.")
    keep_set = set(keep)
    new_of = {c: str(mapping.get(c, c)) for c in names if c in keep_set}
    new_names = list(dict.fromkeys(new_of.values()))
    if len(new_names) < 2:
        raise DataError(f"data.classes / data.class_map leave {len(new_names)} class(es) ({new_names}); "
                        "a classifier needs at least 2.")
    lookup = torch.full((len(names),), -1, dtype=torch.long)
    for c, new in new_of.items():
        lookup[names.index(c)] = new_names.index(new)
    splits, dropped = {}, []
    for split, data in bundle.splits.items():
        new_labels = lookup[data.labels.cpu()]
        mask = new_labels >= 0
        idx = torch.nonzero(mask).flatten()
        splits[split] = SplitData(data.images[idx.to(data.images.device)], new_labels[idx].to(data.labels.device),
                                  [data.paths[i] for i in idx.tolist()])
        dropped += [(data.paths[i], f"class {names[int(data.labels[i])]!r} is not in data.classes")
                    for i in torch.nonzero(~mask).flatten().tolist()]
    parts = [f for f in (bundle.excluded, pd.DataFrame(dropped, columns=["path", "reason"])) if len(f)]
    excluded = pd.concat(parts, ignore_index=True) if parts else bundle.excluded
    log.info("class selection: %d classes %s, %d image(s) of other classes excluded", len(new_names), new_names,
             len(dropped))
    return DataBundle(new_names, splits, bundle.root, excluded, bundle.warnings, sources=bundle.sources)
