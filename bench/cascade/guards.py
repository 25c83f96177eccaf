"""What the chain settles before its first field: where it writes, and whether the detector saw the fields.

- ``--out`` is a new or empty folder, or the output of an earlier chain run on the same fields
  folder, which is then replaced whole: the run writes into a hidden sibling folder and swaps it in
  by renaming at the end, so a stopped run leaves the earlier output as it was and a finished one
  leaves nothing of it (old field pictures, an old report). Any other folder with files in it is
  refused, untouched.
- Fields the detector trained or validated on are recognised by their bytes (sha1) in its
  experiment's split (``results/<exp>/manifest.csv``), whatever they are called now. Its boxes on
  them are what it learned, so they are refused; ``--allow-seen-fields`` runs on them with every
  number labelled (summary, counts.csv's ``seen_by_detector``, cascade_metrics.json).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Sequence

import pandas as pd

from bench import runs
from bench.predict.checkpoints import PredictError

SEEN_SPLITS = {"train": "training", "val": "validation"}


# --------------------------------------------------------------------------- the output folder
def replaces_previous(out: Path, fields_dir: Path) -> bool:
    """False for a new or empty ``out``; True for an earlier chain output on ``fields_dir``; else an error."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return False
    if not out.is_dir():
        raise PredictError(f"--out {out} is a file; pass a folder (new, or an earlier chain output to replace).")
    try:
        summary = runs.read_json(out / "summary.json")
    except (OSError, ValueError):
        summary = {}
    if isinstance(summary, dict) and summary.get("kind") == "cascade":
        if Path(summary.get("fields_dir", "")).resolve() == Path(fields_dir).resolve():
            return True
        raise PredictError(f"--out {out} holds the chain output of other fields ({summary.get('fields_dir')}); "
                           f"replacing it with the counts of {fields_dir} would lose it. Pass a new --out folder "
                           "(or delete that one).")
    raise PredictError(f"--out {out} holds files and is not the output of a chain run (no summary.json of one); "
                       "the chain would mix its pictures and tables with them. Pass a new or empty folder; nothing "
                       "was written.")


def staging_folder(out: Path) -> Path:
    """The hidden sibling the run writes into (replaced if a killed run left one)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir()
    return staged


def publish(staged: Path, out: Path, replaces: bool) -> None:
    """The finished output in place of ``out``: renamed in, an earlier output renamed away and removed."""
    if not replaces:
        if out.exists():
            out.rmdir()  # empty (checked at start)
        os.rename(staged, out)
        return
    old = out.parent / f".{out.name}.replaced-{os.getpid()}"
    os.rename(out, old)
    os.rename(staged, out)
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- fields the detector saw
def experiment_manifest(detector_path: Path) -> Path:
    """``results/<exp>/manifest.csv`` of a detector's ``results/<exp>/runs/<model>/seed<n>/best.pt``."""
    return Path(detector_path).parent.parents[2] / "manifest.csv"


def seen_fields(files: Sequence[Path], root: Path, detector_path: Path) -> dict[str, str] | None:
    """Field (relative path) -> the split of the detector's experiment it was in (train or val),
    matched by bytes; None when the detector's manifest is not there to tell."""
    manifest_path = experiment_manifest(detector_path)
    try:
        manifest = pd.read_csv(manifest_path, dtype=str, keep_default_na=False)
        split_of = dict(zip(manifest["sha1"], manifest["split"]))
    except (OSError, ValueError, KeyError):
        return None
    out = {}
    for path in files:
        split = split_of.get(hashlib.sha1(path.read_bytes()).hexdigest())
        if split in SEEN_SPLITS:
            out[path.relative_to(root).as_posix()] = split
    return out


def seen_warnings(seen: dict[str, str] | None, n_fields: int, detector_path: Path, allow: bool) -> list[str]:
    """The refusal (an error) for fields the detector saw, or with ``allow`` the warning every
    output carries; a note when it cannot be told."""
    manifest = experiment_manifest(detector_path)
    if seen is None:
        return [f"could not check whether the detector saw these fields in training (no readable split at "
                f"{manifest}): if it did, its numbers on them are optimistic."]
    if not seen:
        return []
    examples = ", ".join(f"{f} ({SEEN_SPLITS[s]})" for f, s in list(seen.items())[:3])
    what = (f"{len(seen)} of the {n_fields} fields were used to train or validate the detector (its experiment's "
            f"split {manifest}; e.g. {examples})")
    if not allow:
        raise PredictError(f"{what}: its boxes on them are what it learned, not what it finds on new fields, so every "
                           "count and score on them would be optimistic. Pass fields it never saw (its test fields, "
                           "or new ones), or --allow-seen-fields to run anyway with every number labelled.")
    return [f"{what}: numbers on them are optimistic (seen by the detector; listed in summary.json seen_fields and "
            "counts.csv seen_by_detector)."]
