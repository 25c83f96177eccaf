"""The published numbers a run is compared with: Gavas & Olpadkar 2021, Table 2, on PBC's classes."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

import pandas as pd

import bench

log = logging.getLogger("bench.leaderboard")

# protocol column: how the run differs from the paper's recipe (bench.config.recipe); paper_diff is
# only filled for runs that follow it, since any other difference is not a replication.
PROTOCOL_FOLLOWED = "paper"
PROTOCOL_RECIPE = "gavas2021"  # the paper whose Table 2 gives paper_test_acc
PROTOCOL_UNKNOWN = "unknown"


def reference_dir() -> Path:
    """The published tables (``bench/reference``, package data): found from the package, so an
    installed wheel and any working directory see them."""
    return bench.REFERENCE_DIR


# The published tables are for the PBC dataset's eight classes; a run on other classes (another
# lab's folder, a subset, grouped classes) is not comparable with them, whatever its model.
PBC_CLASSES = frozenset({"basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil",
                         "platelet"})


def is_pbc_classes(classes: Sequence[str]) -> bool:
    """Whether ``classes`` are PBC's eight (case and order aside): the published numbers apply."""
    return len(classes) == len(PBC_CLASSES) and {str(c).lower() for c in classes} == PBC_CLASSES


def load_reference(path: Path | None = None) -> dict[str, float]:
    """Model name -> overall test accuracy from Gavas & Olpadkar 2021, Table 2; {} if absent."""
    path = path or reference_dir() / "gavas2021_table2.csv"
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        log.debug("no reference table at %s: %s", path, exc)
        return {}
    if not {"model", "overall"} <= set(table.columns):
        log.warning("reference table %s lacks 'model'/'overall' columns; ignoring it", path)
        return {}
    return {str(m): float(a) for m, a in zip(table["model"], table["overall"])}


def paper_accuracy(model: str, reference: dict[str, float]) -> float:
    """The paper's test accuracy for a model name, NaN if the paper has no such model.

    Only exact torchvision names match (optionally written ``torchvision/<name>``):
    e.g. ``timm/resnet18`` is a different implementation and must not borrow the number.
    """
    if model in reference:
        return reference[model]
    prefix, _, name = model.rpartition("/")
    if prefix == "torchvision" and name in reference:
        return reference[name]
    return math.nan


def protocol_text(deviations: list[str] | None) -> str:
    """The protocol column: "paper", the deviations joined by "; ", or "unknown"."""
    if deviations is None:
        return PROTOCOL_UNKNOWN
    return "; ".join(deviations) if deviations else PROTOCOL_FOLLOWED
