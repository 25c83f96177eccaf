"""The stratified train / validation / test split and its manifest.

The split is made once per experiment from ``data.split_seed`` and written as
``manifest.csv`` (path, sha1, label, split); every model of the experiment reads it
back, so all models see the identical split (the paper's protocol: one stratified
64/24/12 split shared by the 27 models).

Duplicates: files with identical bytes are one *group* and always land in the same
split, so a copy of a test image can never sit in train. Identical files that carry
different labels cannot be scored honestly; they are reported and kept in train only.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from bench.data.imagefolder import DataError
from bench.runs import read_json, write_csv_atomic, write_json_atomic
from bench.config import SPLIT_MODES  # the choices, defined once

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ["path", "sha1", "label", "split"]


def file_sha1(path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


SPLIT_ROUNDINGS = ("round", "ceil")


def split_counts(n: int, fractions: Sequence[float], rounding: str = "round") -> tuple[int, int, int]:
    """Group counts per split for a class of ``n`` groups.

    ``round``: val and test are rounded shares of ``n``, at least 1 each, train gets the rest.
    ``ceil``: what scikit-learn's ``train_test_split`` gives when each class is split on its own,
    test first and then validation out of the rest: ``n_test = ceil(n * test share)``,
    ``n_val = ceil((n - n_test) * val / (train + val))``. Gavas & Olpadkar's per-class test counts
    are exactly ceil(0.12 x class size) (147 basophils of 1,218, ...), so this reproduces them;
    their validation rule is not published, and this one is our assumption."""
    import math

    f_train, f_val, f_test = fractions
    total = f_train + f_val + f_test
    if rounding == "ceil":
        n_test = max(1, math.ceil(n * (f_test / total)))
        n_val = max(1, math.ceil((n - n_test) * (f_val / (f_train + f_val))))
    elif rounding == "round":
        n_val = max(1, int(round(n * f_val / total)))
        n_test = max(1, int(round(n * f_test / total)))
    else:
        raise DataError(f"data.split_rounding={rounding!r} is not one of {', '.join(SPLIT_ROUNDINGS)}.")
    return n - n_val - n_test, n_val, n_test


def stratified_split(
    table: pd.DataFrame, *, seed: int, fractions: Sequence[float], stream: Sequence[int] = (),
    rounding: str = "round",
) -> pd.Series:
    """Assign each row of ``table`` (columns path, sha1, label) to train/val/test.

    Rows are grouped by content hash; each class's groups are shuffled with a generator seeded by
    ``seed`` and the class name. The shares are counted in files, not groups: the class's file
    count gives the test and validation counts (:func:`split_counts`), and groups are dealt to test,
    then validation, from the end of the shuffled order, a group that would overshoot passing its
    turn to a smaller one (so two identical files never make a class's test share one file short or
    long where other groups can fill it; without duplicates this is the plain cut of the shuffled
    list). A share the groups cannot fill exactly is listed in the result's ``attrs["shortfalls"]``.
    Returns a Series of split names aligned with ``table``. ``stream`` (Monte Carlo
    cross-validation: the repetition) is appended to the generator seed; empty for the
    holdout split, whose generator is unchanged.
    """
    if len(fractions) != 3 or min(fractions) <= 0:
        raise DataError(
            f"data.split_fractions={list(fractions)} must be three positive fractions "
            "(train, val, test), e.g. [0.64, 0.24, 0.12]."
        )
    clean = table[~table["sha1"].isin(conflicting_hashes(table))]
    split = pd.Series("train", index=table.index, dtype=object)
    sizes = clean.groupby("sha1").size()
    files_per_class = table.groupby("label").size()
    too_small, shortfalls = [], []
    for label, class_groups in clean.drop_duplicates("sha1")[["sha1", "label"]].groupby("label", sort=True):
        n = len(class_groups)
        if n < 3:  # one group per split at the least
            too_small.append(f"{label!r} ({n} distinct images)")
            continue
        # Seed with the class name too, so adding a class does not reshuffle the others.
        rng = np.random.default_rng([seed, _label_key(label), *stream])
        # Sorted by hash first: the split must not depend on the order files were listed in.
        hashes = list(np.sort(class_groups["sha1"].to_numpy())[rng.permutation(n)])
        # Shares of all the class's files, those kept in train for a label conflict included (they
        # are the class's images too: the paper's 375 eosinophils are 12 % of all 3,117).
        _, want_val, want_test = split_counts(int(files_per_class[label]), fractions, rounding)
        assign: dict[str, str] = {}
        for name, want in (("test", want_test), ("val", want_val)):
            taken = _fill(hashes, sizes, want, keep=1 + (name == "test"))
            assign.update(dict.fromkeys(taken, name))
            hashes = [h for h in hashes if h not in assign]
            got = int(sizes[taken].sum())
            if got != want:
                shortfalls.append(f"class {label!r}: {got} {name} images where {want} were due (identical files "
                                  "are kept together in one split)")
        mask = clean["sha1"].isin(assign)
        split[clean.index[mask]] = clean.loc[mask, "sha1"].map(assign)
    if too_small:
        raise DataError(
            "class(es) too small to split into train/val/test: "
            + ", ".join(too_small)
            + ". Each class needs at least 3 distinct images; add images or remove the folder."
        )
    split.attrs["shortfalls"] = shortfalls
    return split


def _fill(hashes: list, sizes: pd.Series, want: int, *, keep: int) -> list:
    """Groups from the end of ``hashes`` whose files add up to ``want`` exactly where some choice of
    them does (else to the largest sum below it), leaving at least ``keep`` groups behind; never
    empty (with no group small enough, the smallest one). Walking from the end, a group is taken
    when the groups after it can still complete the sum: without duplicates, the last ``want``."""
    taken = _subset_from_end(hashes, sizes, want)
    if len(hashes) - len(taken) < keep:  # it took (nearly) everything: choose among all but the first
        taken = _subset_from_end(hashes[keep:], sizes, want)
    return taken


def _subset_from_end(hashes: list, sizes: pd.Series, want: int) -> list:
    candidates = list(reversed(hashes))
    counts = [int(sizes[h]) for h in candidates]
    mask = (1 << (want + 1)) - 1
    reach = [1] * (len(candidates) + 1)  # reach[i]: bit t set when groups i.. can sum to t files
    for i in range(len(candidates) - 1, -1, -1):
        reach[i] = (reach[i + 1] | (reach[i + 1] << counts[i])) & mask
    target = reach[0].bit_length() - 1  # the largest reachable sum <= want
    if target <= 0:
        return [min(candidates, key=lambda h: int(sizes[h]))] if candidates else []
    taken, left = [], target
    for i, h in enumerate(candidates):
        if counts[i] <= left and (reach[i + 1] >> (left - counts[i])) & 1:
            taken.append(h)
            left -= counts[i]
    return taken


def conflicting_hashes(table: pd.DataFrame) -> set:
    """Content hashes that carry more than one label: such files cannot be scored honestly and stay
    in train (every split rule of this module uses this one)."""
    labels_per_hash = table.groupby("sha1")["label"].nunique()
    return set(labels_per_hash.index[labels_per_hash > 1])


def _label_key(label: str) -> int:
    return int(hashlib.sha1(label.encode()).hexdigest()[:8], 16)


# --------------------------------------------------------------------------- cross-validation
# Added for bench/protocols/cv.py. data.split_mode picks the split; "holdout" (the default)
# is the function above with its generator unchanged, written to manifest.csv as before.


def kfold_assignment(table: pd.DataFrame, *, seed: int, n_folds: int) -> pd.Series:
    """Stratified fold index (0..n_folds-1) of each row; -1 for rows that stay in train.

    Like the holdout split, rows are grouped by content hash (copies share a fold) and
    identical bytes under different labels never reach a test fold (-1). Each class's
    groups, sorted by hash, are shuffled by a generator seeded with ``seed``, the class
    name and ``n_folds`` (never the fold), then dealt to the folds in turn, starting
    where the previous class stopped so that folds differ in size by at most one. So
    the folds are disjoint, cover every image, and do not depend on which fold is asked for.
    """
    if n_folds is None or int(n_folds) != n_folds or n_folds < 2:
        raise DataError(f"data.n_folds={n_folds!r}: k-fold cross-validation needs an integer of at least 2.")
    n_folds = int(n_folds)
    fold_of_hash: dict[str, int] = {}
    start, too_small = 0, []
    clean = table[~table["sha1"].isin(conflicting_hashes(table))]
    for label, class_groups in clean.drop_duplicates("sha1").groupby("label", sort=True):
        n = len(class_groups)
        if n < max(n_folds, 3):
            too_small.append(f"{label!r} ({n} distinct images)")
            continue
        rng = np.random.default_rng([seed, _label_key(label), n_folds])
        hashes = np.sort(class_groups["sha1"].to_numpy())[rng.permutation(n)]
        fold_of_hash.update(zip(hashes, (start + np.arange(n)) % n_folds))
        start = (start + n) % n_folds
    if too_small:
        raise DataError(
            f"class(es) too small for {n_folds}-fold cross-validation: {', '.join(too_small)}. Each class "
            f"needs at least max(n_folds, 3) distinct images; use fewer folds or remove the folder."
        )
    return table["sha1"].map(fold_of_hash).fillna(-1).astype(int)


def kfold_split(
    table: pd.DataFrame, *, seed: int, n_folds: int, fold: int, fractions: Sequence[float]
) -> pd.Series:
    """Fold ``fold`` is the test set; validation is carved per class from the other folds
    in the train:val ratio of ``fractions`` (at least one group each), the rest is train."""
    if fold is None or not 0 <= fold < n_folds:
        raise DataError(f"data.fold={fold!r} must be in 0..{n_folds - 1} for data.n_folds={n_folds}.")
    f_train, f_val = fractions[0], fractions[1]
    folds = kfold_assignment(table, seed=seed, n_folds=n_folds)
    split = pd.Series("train", index=table.index, dtype=object)
    split[folds == fold] = "test"
    rest = table[(folds >= 0) & (folds != fold)].drop_duplicates("sha1")
    for label, class_groups in rest.groupby("label", sort=True):
        n = len(class_groups)
        n_val = min(n - 1, max(1, int(round(n * f_val / (f_train + f_val)))))
        rng = np.random.default_rng([seed, _label_key(label), n_folds, fold])
        val_hashes = np.sort(class_groups["sha1"].to_numpy())[rng.permutation(n)][:n_val]
        split[table["sha1"].isin(set(val_hashes)) & (folds >= 0)] = "val"
    return split


def manifest_filename(split_mode: str = "holdout", *, n_folds=None, fold=None, fractions=None, rounding=None,
                      test_source=None) -> str:
    """``manifest.csv`` for the holdout split; one file per fold / repetition / held-out source otherwise."""
    if split_mode == "holdout":
        return "manifest.csv"
    if split_mode == "leave_one_source_out":
        return f"manifest-loso-{test_source}.csv"
    if split_mode == "kfold":
        return f"manifest-kfold{n_folds}-fold{int(fold):02d}.csv"
    if split_mode == "montecarlo":
        test = 100 * fractions[2] / sum(fractions)
        return f"manifest-mc{test:g}-rep{int(fold):02d}.csv"
    raise DataError(f"data.split_mode={split_mode!r} is not one of {', '.join(SPLIT_MODES)}.")


def make_manifest(
    table: pd.DataFrame, *, seed: int, fractions: Sequence[float], split_mode: str = "holdout",
    n_folds: int | None = None, fold: int | None = None, rounding: str = "round", test_source: str | None = None,
) -> pd.DataFrame:
    """The split of ``table`` as a manifest (sorted by path); ``attrs["shortfalls"]``: the classes
    whose shares the groups of identical files could not fill exactly (logged when it is written).

    A table with a ``source`` column (data=multi_source) is stratified by class within each source: the
    split rules see ``<source>/<class>`` as the class (so identical bytes in two sources stay in train)."""
    manifest = table[["path", "sha1", "label"]].copy()
    strata = manifest if "source" not in table else manifest.assign(label=table["source"] + "/" + table["label"])
    if split_mode == "leave_one_source_out":
        split = leave_one_source_out_split(strata, table["source"], seed=seed, fractions=fractions,
                                           test_source=test_source)
    elif split_mode == "kfold":
        split = kfold_split(strata, seed=seed, n_folds=n_folds, fold=fold, fractions=fractions)
    elif split_mode == "montecarlo":
        if fold is None or fold < 0:
            raise DataError(f"data.fold={fold!r}: Monte Carlo splits need the repetition index (0, 1, ...).")
        split = stratified_split(strata, seed=seed, fractions=fractions, stream=(fold,))
    elif split_mode == "holdout":
        split = stratified_split(strata, seed=seed, fractions=fractions, rounding=rounding)
    else:
        raise DataError(f"data.split_mode={split_mode!r} is not one of {', '.join(SPLIT_MODES)}.")
    manifest["split"] = split
    manifest = manifest.sort_values("path").reset_index(drop=True)[MANIFEST_COLUMNS]
    manifest.attrs["shortfalls"] = list(split.attrs.get("shortfalls", []))
    return manifest


def conflicting_duplicates(table: pd.DataFrame) -> pd.DataFrame:
    """Rows whose bytes also appear under another label."""
    n_labels = table.groupby("sha1")["label"].transform("nunique")
    return table[n_labels > 1].sort_values(["sha1", "path"])


def split_settings(*, seed: int, fractions: Sequence[float], split_mode: str = "holdout", n_folds=None,
                   fold=None, rounding: str = "round", test_source=None) -> dict:
    """The settings a manifest was made with, as recorded beside it (``manifest.json``)."""
    settings = {"data.split_seed": int(seed), "data.split_fractions": [float(f) for f in fractions],
                "data.split_mode": str(split_mode)}
    if split_mode == "leave_one_source_out":
        settings["data.test_source"] = str(test_source)
    elif split_mode != "holdout":
        settings.update({"data.n_folds": n_folds, "data.fold": fold})
    settings["data.split_rounding"] = str(rounding)
    return settings


# What a manifest.json without a key was made with: the option did not exist yet (or, before it was
# always recorded, was left at its default), so the split came from this value.
RECORDED_DEFAULTS = {"data.split_rounding": "round", "data.split_mode": "holdout"}


def settings_path(manifest_path: Path) -> Path:
    return Path(manifest_path).with_suffix(".json")


def check_split_settings(manifest_path: Path, settings: dict, *, record_missing: bool = True) -> None:
    """An existing manifest made with other split settings is an error naming the setting: reusing
    it would run the new settings on the old split while config.yaml claims otherwise."""
    recorded_path = settings_path(manifest_path)
    try:
        recorded = read_json(recorded_path)
    except FileNotFoundError:
        # A manifest from before the settings were recorded: it was made by this experiment's first
        # run, whose settings we cannot see any more; adopt the current ones from now on.
        if record_missing:
            write_json_atomic(recorded_path, settings)
        log.info("%s had no record of its split settings; recorded %s", manifest_path, settings)
        return
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {recorded_path} ({exc}); delete it to record the current split settings.")
    if not isinstance(recorded, dict):
        raise DataError(f"{recorded_path} is not a record of split settings; delete it to record the current ones.")
    made_with = {**RECORDED_DEFAULTS, **recorded}
    differ = [k for k in settings if made_with.get(k) != settings[k]]
    if differ:
        what = "; ".join(f"{k}={settings[k]} (the split was made with {made_with.get(k)})" for k in differ)
        raise DataError(
            f"{what}. The experiment's split {manifest_path} is shared by all its runs and stays as it is; "
            "a different split is a different experiment: add experiment_name=<new name> (each experiment "
            "has its own split), or put the setting back.")


def load_or_create_manifest(
    path: Path, table: pd.DataFrame, *, seed: int, fractions: Sequence[float], **split_options
) -> pd.DataFrame:
    """Read the experiment's manifest, or write it from ``table`` on first use.

    An existing manifest must describe the same files (path, bytes, label) and have been made
    with the same split settings (``manifest.json`` beside it); otherwise reusing it would
    silently mix splits or misreport them, so that is an error naming the fix.
    """
    path = Path(path)
    settings = split_settings(seed=seed, fractions=fractions, **split_options)
    if path.exists():
        manifest = pd.read_csv(path, dtype=str, keep_default_na=False)
        if list(manifest.columns) != MANIFEST_COLUMNS:
            raise DataError(f"{path} is not a split manifest (columns {list(manifest.columns)}); delete it.")
        check_split_settings(path, settings)
        _check_same_files(path, manifest, table)
        return manifest
    manifest = make_manifest(table, seed=seed, fractions=fractions, **split_options)  # mode, folds, fold, rounding
    write_json_atomic(settings_path(path), settings)
    write_csv_atomic(path, manifest)
    counts = manifest.groupby("split").size().reindex(SPLITS, fill_value=0)
    log.info("wrote split manifest %s (%s)", path, ", ".join(f"{k} {v}" for k, v in counts.items()))
    for line in manifest.attrs.get("shortfalls", []):
        log.warning("split %s: %s", path, line)
    return manifest


def _check_same_files(path: Path, manifest: pd.DataFrame, table: pd.DataFrame) -> None:
    old = set(zip(manifest["path"], manifest["sha1"], manifest["label"]))
    new = set(zip(table["path"], table["sha1"], table["label"]))
    if old == new:
        return
    old_paths = {p for p, _, _ in old}
    new_paths = {p for p, _, _ in new}
    added, removed = sorted(new_paths - old_paths), sorted(old_paths - new_paths)
    changed = sorted(p for p, _, _ in new - old if p in old_paths)
    examples = (added + removed + changed)[:3]
    raise DataError(
        f"the data no longer matches the experiment's split manifest {path}: {len(added)} file(s) added, "
        f"{len(removed)} removed, {len(changed)} changed (e.g. {', '.join(examples)}). Reusing it would mix "
        "splits across models. Use a new experiment_name=... for the new data, or delete the manifest "
        "(and the experiment's runs) to re-split."
    )


# --------------------------------------------------------------------------- leave one source out
def leave_one_source_out_split(strata: pd.DataFrame, sources: pd.Series, *, seed: int, fractions: Sequence[float],
                               test_source: str) -> pd.Series:
    """Every image of ``test_source`` is test; validation is carved from each (source, class) of the
    other sources in the train:val ratio of ``fractions`` (at least one group where a stratum has two),
    the rest is train. ``strata``: path, sha1 and ``<source>/<class>`` as label."""
    f_train, f_val = fractions[0], fractions[1]
    split = pd.Series("train", index=strata.index, dtype=object)
    held = sources == test_source
    split[held] = "test"
    rest = strata[~held & ~strata["sha1"].isin(conflicting_hashes(strata[~held]))]
    for label, groups in rest.drop_duplicates("sha1").groupby("label", sort=True):
        n = len(groups)
        n_val = min(n - 1, max(1, int(round(n * f_val / (f_train + f_val)))))
        rng = np.random.default_rng([seed, _label_key(label), _label_key(test_source)])
        val_hashes = np.sort(groups["sha1"].to_numpy())[rng.permutation(n)][:n_val]
        split[~held & strata["sha1"].isin(set(val_hashes))] = "val"
    return split
