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
from bench.runs import write_csv_atomic

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ["path", "sha1", "label", "split"]


def file_sha1(path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def split_counts(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """Group counts per split for a class of ``n`` groups: val and test are rounded,
    at least 1 each, and train gets the rest (at least 1)."""
    f_train, f_val, f_test = fractions
    total = f_train + f_val + f_test
    n_val = max(1, int(round(n * f_val / total)))
    n_test = max(1, int(round(n * f_test / total)))
    return n - n_val - n_test, n_val, n_test


def stratified_split(table: pd.DataFrame, *, seed: int, fractions: Sequence[float]) -> pd.Series:
    """Assign each row of ``table`` (columns path, sha1, label) to train/val/test.

    Rows are grouped by content hash; each class's groups are shuffled with a
    generator seeded by ``seed`` and the class name, then cut by ``fractions``.
    Returns a Series of split names aligned with ``table``.
    """
    if len(fractions) != 3 or min(fractions) <= 0:
        raise DataError(
            f"data.split_fractions={list(fractions)} must be three positive fractions "
            "(train, val, test), e.g. [0.64, 0.24, 0.12]."
        )
    labels_per_hash = table.groupby("sha1")["label"].nunique()
    conflicting = set(labels_per_hash.index[labels_per_hash > 1])
    split = pd.Series("train", index=table.index, dtype=object)

    clean = table[~table["sha1"].isin(conflicting)]
    groups = clean.drop_duplicates("sha1")[["sha1", "label"]]
    too_small = []
    for label, class_groups in groups.groupby("label", sort=True):
        n = len(class_groups)
        n_train, n_val, n_test = split_counts(n, fractions)
        if n_train < 1:
            too_small.append(f"{label!r} ({n} distinct images)")
            continue
        # Seed with the class name too, so adding a class does not reshuffle the others.
        rng = np.random.default_rng([seed, int(hashlib.sha1(label.encode()).hexdigest()[:8], 16)])
        # Sorted by hash first: the split must not depend on the order files were listed in.
        hashes = np.sort(class_groups["sha1"].to_numpy())[rng.permutation(n)]
        assign = dict.fromkeys(hashes[n_train : n_train + n_val], "val")
        assign.update(dict.fromkeys(hashes[n_train + n_val :], "test"))
        mask = clean["sha1"].isin(assign)
        split[clean.index[mask]] = clean.loc[mask, "sha1"].map(assign)
    if too_small:
        raise DataError(
            "class(es) too small to split into train/val/test: "
            + ", ".join(too_small)
            + ". Each class needs at least 3 distinct images; add images or remove the folder."
        )
    return split


def make_manifest(table: pd.DataFrame, *, seed: int, fractions: Sequence[float]) -> pd.DataFrame:
    manifest = table[["path", "sha1", "label"]].copy()
    manifest["split"] = stratified_split(manifest, seed=seed, fractions=fractions)
    return manifest.sort_values("path").reset_index(drop=True)[MANIFEST_COLUMNS]


def conflicting_duplicates(table: pd.DataFrame) -> pd.DataFrame:
    """Rows whose bytes also appear under another label."""
    n_labels = table.groupby("sha1")["label"].transform("nunique")
    return table[n_labels > 1].sort_values(["sha1", "path"])


def load_or_create_manifest(
    path: Path, table: pd.DataFrame, *, seed: int, fractions: Sequence[float]
) -> pd.DataFrame:
    """Read the experiment's manifest, or write it from ``table`` on first use.

    An existing manifest must describe the same files (path, bytes, label); if the data
    changed, reusing it would silently mix splits, so that is an error naming the fix.
    """
    path = Path(path)
    if path.exists():
        manifest = pd.read_csv(path, dtype=str, keep_default_na=False)
        if list(manifest.columns) != MANIFEST_COLUMNS:
            raise DataError(f"{path} is not a split manifest (columns {list(manifest.columns)}); delete it.")
        _check_same_files(path, manifest, table)
        return manifest
    manifest = make_manifest(table, seed=seed, fractions=fractions)
    write_csv_atomic(path, manifest)
    counts = manifest.groupby("split").size().reindex(SPLITS, fill_value=0)
    log.info("wrote split manifest %s (%s)", path, ", ".join(f"{k} {v}" for k, v in counts.items()))
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
