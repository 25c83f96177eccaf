"""The preflight's checks of the data: images and classes, an existing split, swept split keys."""

from __future__ import annotations

from bench.config import DETECTION_KINDS
from bench.preflight.report import Plan, Report

SPLIT_KEYS = ("data.split_seed", "data.split_fractions", "data.split_mode", "data.split_rounding")


def check_data(cfg, report: Report) -> int | None:
    """Problems with the data; returns the number of images when it is known cheaply."""
    from bench.data.imagefolder import DataError, scan_imagefolder

    kind = cfg.data.kind
    n_images = None
    if kind == "synthetic":
        from bench.data.synthetic import CLASS_NAMES

        n_images = cfg.data.synthetic_n_per_class * len(CLASS_NAMES)
    try:
        if kind == "imagefolder":
            if not cfg.data.root or cfg.data.root == "???":
                raise DataError("data=imagefolder needs data.root=PATH (a folder with one sub-folder per class)")
            records, classes = scan_imagefolder(cfg.data.root)
            n_images = len(records)
            report.notes.append(f"data: {n_images} images in {len(classes)} classes under {cfg.data.root}")
            _check_classes(cfg, records, classes, report)
            _check_manifest(cfg, records, report)
        elif kind == "bloodmnist":
            from bench.data.bloodmnist import bloodmnist_file

            path = bloodmnist_file(cfg.data.root, cfg.data.bloodmnist_size)
            if not path.exists() and not cfg.data.download:
                raise DataError(f"{path} does not exist; set data.root=... to its folder or data.download=true")
            report.notes.append(f"data: {path}")
        elif kind == "multi_source":
            from bench.data.sources import check_test_source, scan_sources

            table, _, classes, left_out, warnings = scan_sources(cfg.data)
            n_images = len(table)
            per_source = table.groupby("source").size()
            report.notes.append(f"data: {n_images} images in {len(classes)} classes from "
                                + ", ".join(f"{s} ({int(n)})" for s, n in per_source.items()))
            report.warnings.extend(warnings)
            if len(left_out):
                report.warnings.append(f"{len(left_out)} image(s) in folders no class map names are left out "
                                       f"(e.g. {left_out['path'].iloc[0]}): excluded.csv will list them.")
            if cfg.data.split_mode == "leave_one_source_out":
                check_test_source(list(cfg.data.sources), cfg.data.get("test_source"))
        elif kind in DETECTION_KINDS and kind != "synthetic_smear":
            _check_detection_data(cfg, report)
        else:
            report.notes.append(f"data: {kind}")
    except (DataError, ValueError, OSError) as exc:
        report.problems.append(str(exc))
    _check_augment(cfg, report)
    return n_images



def _check_detection_data(cfg, report: Report) -> None:
    """Boxes per label; what was read (coordinates, an official split) as notes, what was wrong as
    warnings; a label on too few fields named with its files (a typo makes a class: a problem when
    the fields then cannot be split), and an official split with an empty part."""
    from bench.detection.data import read_detection_set
    from bench.detection.fields import (check_splits, official_lists, rare_labels, rare_labels_message,
                                        rare_split_problem)

    dset = read_detection_set(cfg.data)
    counts = dset.class_counts()
    report.notes.append(f"data: {len(dset.images)} images, boxes: " +
                        ", ".join(f"{c} {counts[c]}" for c in dset.classes))
    report.notes.extend(f"annotations: {line}" for line in dset.report.notes)
    report.warnings.extend(f"annotations: {line}" for line in dset.report.count_lines())
    problem, rare = rare_split_problem(dset), rare_labels(dset)
    if problem:
        report.problems.append(problem)
    elif rare:
        report.warnings.append(rare_labels_message(dset, rare, stops=False))
    if all(im.split for im in dset.images):
        check_splits({s: [im for im in dset.images if im.split == s] for s in ("train", "val", "test")},
                     official_lists(dset.root))


# A class with fewer images than this gives validation / test shares of one or two images:
# its per-class numbers are noise, and a sweep ranked on them is too.
MIN_CLASS_IMAGES = 10



def _check_classes(cfg, records, classes, report: Report) -> None:
    """Per-class counts (printed), too-small classes (warned, by name) and class folders with no
    image files (named: they are not classes of this run)."""
    from collections import Counter

    from bench.data.imagefolder import class_folders_without_images
    from bench.data.split import split_counts

    counts = Counter(r.label for r in records)
    report.notes.append("classes: " + ", ".join(f"{c} {counts[c]}" for c in classes))
    fractions = list(cfg.data.split_fractions)
    for c in classes:
        n = counts[c]
        if n < 3:
            report.problems.append(
                f"class {c!r} has {n} image(s): a class needs at least 3 to reach train, validation and test. "
                "Add images, merge it into another class (data.class_map) or leave it out (data.classes=[...]).")
        elif n < MIN_CLASS_IMAGES and len(fractions) == 3:
            n_train, n_val, n_test = split_counts(n, fractions)
            report.warnings.append(
                f"class {c!r} has only {n} images ({n_train} train / {n_val} validation / {n_test} test): its "
                f"per-class numbers rest on {n_val} and {n_test} image(s) and say little. Add images, merge it "
                "(data.class_map) or leave it out (data.classes=[...]); trainer.class_weights=balanced helps it "
                "count in training.")
    empty = class_folders_without_images(cfg.data.root)
    if empty:
        report.warnings.append(
            f"folder(s) {', '.join(repr(e) for e in empty)} under {cfg.data.root} hold no image files and are "
            "not classes of this run; put the images there, or move the folder out of data.root.")


def _check_manifest(cfg, records, report: Report) -> None:
    """An experiment's existing split must fit this data and these split settings; found here,
    before any run folder is touched (a mismatch found later would have set runs aside first)."""
    from bench import runs
    from bench.data.imagefolder import DataError
    from bench.data.split import check_split_settings, split_settings

    if cfg.data.split_mode != "holdout":
        return  # cross-validation folds are checked by each fold's run
    path = runs.experiment_dir(cfg.paths.results_dir, cfg.experiment_name) / "manifest.csv"
    if not path.is_file():
        return
    try:
        settings = split_settings(seed=cfg.data.split_seed, fractions=cfg.data.split_fractions,
                                  rounding=cfg.data.get("split_rounding") or "round")
        check_split_settings(path, settings, record_missing=False)
    except DataError as exc:
        report.problems.append(str(exc))
    import pandas as pd

    try:
        manifest = pd.read_csv(path, dtype=str, keep_default_na=False)
        old = set(zip(manifest["path"], manifest["label"]))
    except (OSError, ValueError, KeyError) as exc:
        report.problems.append(f"cannot read the experiment's split manifest {path} ({exc}); delete it to re-split.")
        return
    new = {(r.path, r.label) for r in records}
    # Files of the split that are gone or relabelled, or files it never saw: not the experiment's data.
    # Files left out of the split because they did not decode are listed in the runs' excluded.csv.
    excluded = set()
    for excluded_csv in path.parent.glob("runs/*/seed*/excluded.csv"):
        try:
            excluded |= set(pd.read_csv(excluded_csv, dtype=str, keep_default_na=False)["path"])
        except (OSError, ValueError, KeyError):
            continue
    missing = old - new
    added = {(p, label) for p, label in new - old if p not in excluded}
    if missing or added:
        examples = ", ".join(p for p, _ in sorted(missing | added)[:3])
        report.problems.append(
            f"data.root={cfg.data.root} does not match the split of experiment {cfg.experiment_name!r} "
            f"({path}: {len(missing)} file(s) of the split are missing or relabelled, {len(added)} are new; e.g. "
            f"{examples}). Nothing was moved. Another dataset is another experiment: add experiment_name=<name>.")


def check_split_sweep(plan: Plan, report: Report) -> None:
    """A sweep over split settings into one experiment would run every value on the first split:
    each swept split key must be in experiment_name (``${data.split_seed}`` for data.split_seed; an
    interpolation of another key does not tell its values apart)."""
    names = _experiment_name_texts(plan)
    for key in SPLIT_KEYS:
        values = plan.swept.get(key, [])
        if len(values) < 2 or all(f"${{{key}}}" in name for name in names):
            continue
        report.problems.append(
            f"{key} is swept ({', '.join(values)}) but every value would share experiment "
            f"{plan.cfg.experiment_name!r} and so one split (an experiment has one). Give each split its own "
            f"experiment: add 'experiment_name={plan.cfg.experiment_name}_split${{{key}}}'.")


def _experiment_name_texts(plan: Plan) -> list[str]:
    """experiment_name as written (interpolations unresolved): the composed config's (command line or
    experiment file) and every swept value of it."""
    node = plan.cfg._get_node("experiment_name")
    texts = [str(node._value())] if node is not None else []
    return texts + list(plan.swept.get("experiment_name", []))


def _check_augment(cfg, report: Report) -> None:
    from bench.data.transforms import BatchAugment

    aug = cfg.data.augment
    try:
        BatchAugment(aug.hflip, aug.vflip, aug.rotation, aug.interpolation)
    except ValueError as exc:
        report.problems.append(str(exc))

