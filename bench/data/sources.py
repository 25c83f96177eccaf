"""``data=multi_source``: the class folders of several labs in one experiment, each image keeping its source.

``data.sources={pbc: PATH, tecom: PATH}`` names each lab's folder (one sub-folder per class, as for
``data=imagefolder``). Its folder names become class names through ``data.source_maps``: per source,
the name of a preset of ``bench/conf/external`` (the folder-to-class map of a public set) or a map
``{FOLDER: CLASS}``; without one, the folder names are the class names. A folder a map leaves out is
not a class: its images are listed in excluded.csv with the reason.

An image's path in the manifest, the predictions and the leaderboard is ``<source>/<path in its
folder>``, so its source is the first part of its path (:func:`source_of`). The split is stratified
by class within each source (:mod:`bench.data.split`), and ``data.split_mode=leave_one_source_out``
with ``data.test_source=NAME`` holds one source out entirely as the test set, the domain-generalisation
protocol: one experiment per held-out source.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from bench import CONF_DIR
from bench.data.imagefolder import DataError, scan_imagefolder

log = logging.getLogger(__name__)

PRESETS_DIR = Path(CONF_DIR) / "external"
_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*$")


def source_of(path: str) -> str:
    """The source of a multi-source image from its path (``<source>/...``)."""
    return str(path).split("/", 1)[0]


def folder_map(source: str, spec) -> dict[str, str] | None:
    """``data.source_maps[source]``: a preset name (its ``map``) or a ``{FOLDER: CLASS}`` map; None: identity."""
    if spec is None:
        return None
    if isinstance(spec, str):
        path = PRESETS_DIR / f"{spec}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
            raise DataError(f"data.source_maps.{source}={spec!r} is not a preset; the presets are: {known} "
                            f"(or give a map, data.source_maps={{{source}: {{FOLDER: CLASS}}}}).")
        from omegaconf import OmegaConf

        return {str(k): str(v) for k, v in OmegaConf.to_container(OmegaConf.load(path))["map"].items()}
    return {str(k): str(v) for k, v in dict(spec).items()}


def check_sources(sources: dict, source_maps: dict) -> None:
    if len(sources) < 2:
        raise DataError(f"data=multi_source needs data.sources={{NAME: PATH, ...}} with two or more labs' folders "
                        f"(it has {len(sources)}); one folder is data=imagefolder data.root=PATH.")
    bad = [name for name in sources if not _NAME.match(str(name))]
    if bad:
        raise DataError(f"data.sources names {bad} are not usable as path parts: use letters, digits, '_', '.', '-'.")
    unknown = sorted(set(source_maps) - set(sources))
    if unknown:
        raise DataError(f"data.source_maps names {unknown}, which data.sources does not have "
                        f"({', '.join(sources)}).")


def scan_sources(data_cfg) -> tuple[pd.DataFrame, list[Path], list[str], pd.DataFrame, list[str]]:
    """Every source's images: a table (path ``<source>/<rel>``, label, source), their files, the class
    names (sorted union), the images left out (a folder its map does not name) and warnings."""
    sources = {str(k): v for k, v in dict(data_cfg.sources or {}).items()}
    source_maps = {str(k): v for k, v in dict(data_cfg.get("source_maps") or {}).items()}
    check_sources(sources, source_maps)
    rows, files, left_out, warnings = [], [], [], []
    for name, root in sources.items():
        root = Path(str(root)).expanduser()
        try:
            records, folders = scan_imagefolder(root)
        except DataError as exc:
            raise DataError(f"data.sources.{name}: {exc}") from exc
        mapping = folder_map(name, source_maps.get(name))
        if mapping is not None:
            missing = sorted(set(mapping) - set(folders))
            if not set(mapping) & set(folders):
                raise DataError(f"data.sources.{name}={str(root)!r} has none of the folders its map names "
                                f"({', '.join(mapping)}); its folders are {', '.join(folders)}.")
            if missing:
                warnings.append(f"source {name}: folder(s) {missing} of its map are not under {root}.")
        for r in records:
            folder = r.label
            cls = folder if mapping is None else mapping.get(folder)
            path = f"{name}/{r.path}"
            if cls is None:
                left_out.append((path, f"folder {folder!r} of source {name} is not in data.source_maps.{name}"))
                continue
            rows.append((path, cls, name))
            files.append(root / r.path)
    for w in warnings:
        log.warning("%s", w)
    table = pd.DataFrame(rows, columns=["path", "label", "source"])
    class_names = sorted(set(table["label"]))
    excluded = pd.DataFrame(left_out, columns=["path", "reason"])
    per_source = table.groupby("source").size()
    log.info("data=multi_source: %s; %d classes %s",
             ", ".join(f"{s} {int(per_source.get(s, 0))} images" for s in sources), len(class_names), class_names)
    return table, files, class_names, excluded, warnings


def held_out_copies(table: pd.DataFrame, test_source: str) -> pd.Series:
    """Rows of the training sources whose bytes are also an image of the held-out source (the same
    public image in two labs' sets): a mask. Trained on, they would put test images in training."""
    held = set(table.loc[table["source"] == test_source, "sha1"])
    return (table["source"] != test_source) & table["sha1"].isin(held)


def check_test_source(sources, test_source) -> None:
    if test_source not in set(sources):
        raise DataError(f"data.split_mode=leave_one_source_out needs data.test_source, the source held out as the "
                        f"test set: one of {', '.join(sources)} (got {test_source!r}). Run one experiment per "
                        "held-out source, e.g. -m data.test_source=" + ",".join(sources) + ".")


def source_metrics(paths, labels, preds, class_names) -> dict[str, dict]:
    """Per source: images, accuracy, balanced accuracy and macro F1 of one split (scikit-learn's,
    over the classes the source has), keyed by source in order of first appearance."""
    import numpy as np
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    labels, preds = np.asarray(labels), np.asarray(preds)
    of = np.array([source_of(p) for p in paths])
    out = {}
    for source in dict.fromkeys(of.tolist()):
        m = of == source
        present = sorted(set(labels[m].tolist()))
        out[source] = {"n": int(m.sum()), "accuracy": float(accuracy_score(labels[m], preds[m])),
                       "balanced_accuracy": float(balanced_accuracy_score(labels[m], preds[m])),
                       "macro_f1": float(f1_score(labels[m], preds[m], labels=present, average="macro",
                                                  zero_division=0)),
                       "classes": [class_names[i] for i in present]}
    return out
