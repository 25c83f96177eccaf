"""Side by side: the variants of one experiment, one row per model (scratch vs frozen).

``python -m bench.protocols.compare results/scratch_vs_pretrained`` reads every
sub-experiment directly under the folder (a sub-folder with ``runs/``; for
``experiment=scratch_vs_pretrained`` these are ``scratch/`` and ``frozen/``, see
conf/experiment/scratch_vs_pretrained.yaml), through :func:`bench.results.records.collect_runs`
(status.json + metrics.json of each run), and writes ``<folder>/comparison.csv``::

    model, <v>_status, <v>_n_seeds, <v>_val_acc, <v>_test_acc, <v>_<class>..., <v>_train_time_s,
    <v>_params_m, <v>_trainable_params_m   for each variant v (scratch first, then frozen, then
                                           any other, alphabetically),
    test_acc_<b>_minus_<a>                 with exactly two variants a, b

Per-class columns are test accuracy per class (recall, as in the leaderboard), classes in
the order of the data. A model with several completed seeds gets their mean
(``<v>_n_seeds`` says how many); ``<v>_status`` is ``completed`` when at least one seed
completed, else the status of its run (failed, running) or ``missing``. Rows are sorted by
model name. Validation accuracy is there to choose by; test accuracy is what the
published tables report.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from bench import runs
from bench.results.rows import DECIMALS, external_scores
from bench.results.records import collect_runs

COMPARISON_CSV = "comparison.csv"
PREFERRED_ORDER = ("scratch", "frozen")
RUN_KEYS = ("train_time_s", "params_m", "trainable_params_m")


def find_variants(exp_dir) -> list[str]:
    """Sub-experiments of ``exp_dir`` (sub-folders holding ``runs/``), scratch and frozen first."""
    found = sorted(p.name for p in Path(exp_dir).iterdir() if (p / "runs").is_dir()) if Path(exp_dir).is_dir() else []
    return [v for v in PREFERRED_ORDER if v in found] + [v for v in found if v not in PREFERRED_ORDER]


def _num(value) -> float:
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        return math.nan


def _mean(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def comparison_frame(exp_dir, variants: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """The side-by-side table (see the module docstring) as a DataFrame."""
    exp_dir = Path(exp_dir)
    variants = list(variants) if variants else find_variants(exp_dir)
    records = {v: collect_runs(exp_dir / v) for v in variants}
    classes: dict[str, None] = {}
    for recs in records.values():
        for r in recs:
            if r.completed:
                for c in r.metrics.get("classes") or (r.metrics.get("test") or {}).get("per_class", {}):
                    classes.setdefault(str(c), None)
    models = sorted({r.model for recs in records.values() for r in recs})
    # External sets (bench-evaluate) every variant was evaluated on: compared variant by variant.
    found = [{k[4:-len("_balanced_acc")] for r in recs if r.completed and r.root is not None
              for k in external_scores(r.root) if k.endswith("_balanced_acc")} for recs in records.values()]
    external = sorted(set.intersection(*found)) if found else []
    rows = []
    for model in models:
        row: dict = {"model": model}
        for v in variants:
            mine = [r for r in records[v] if r.model == model]
            done = [r for r in mine if r.completed]
            row[f"{v}_status"] = runs.STATUS_COMPLETED if done else (mine[0].status if mine else "missing")
            row[f"{v}_n_seeds"] = len(done)
            row[f"{v}_val_acc"] = _mean([_num((r.metrics.get("val") or {}).get("accuracy")) for r in done])
            row[f"{v}_test_acc"] = _mean([_num((r.metrics.get("test") or {}).get("accuracy")) for r in done])
            for c in classes:
                row[f"{v}_{c}"] = _mean([
                    _num(((r.metrics.get("test") or {}).get("per_class") or {}).get(c, {}).get("accuracy"))
                    for r in done
                ])
            for key in RUN_KEYS:
                row[f"{v}_{key}"] = _mean([_num(r.metrics.get(key)) for r in done])
            row[f"{v}_test_balanced_acc"] = _mean([_num((r.metrics.get("test") or {}).get("balanced_accuracy"))
                                                   for r in done])
            for name in external:
                row[f"{v}_ext_{name}_balanced_acc"] = _mean([_num(external_scores(r.root).get(
                    f"ext_{name}_balanced_acc")) for r in done if r.root is not None])
        if len(variants) == 2:
            a, b = variants
            row[f"test_acc_{b}_minus_{a}"] = row[f"{b}_test_acc"] - row[f"{a}_test_acc"]
            for name in external:  # how the change travels: one number per external set
                row[f"ext_{name}_balanced_acc_{b}_minus_{a}"] = (row[f"{b}_ext_{name}_balanced_acc"]
                                                                 - row[f"{a}_ext_{name}_balanced_acc"])
        rows.append(row)
    columns = ["model"]
    for v in variants:
        columns += [f"{v}_status", f"{v}_n_seeds", f"{v}_val_acc", f"{v}_test_acc",
                    *(f"{v}_{c}" for c in classes), *(f"{v}_{k}" for k in RUN_KEYS), f"{v}_test_balanced_acc",
                    *(f"{v}_ext_{name}_balanced_acc" for name in external)]
    if len(variants) == 2:
        columns.append(f"test_acc_{variants[1]}_minus_{variants[0]}")
        columns += [f"ext_{name}_balanced_acc_{variants[1]}_minus_{variants[0]}" for name in external]
    frame = pd.DataFrame(rows, columns=columns)
    numeric = frame.select_dtypes("number").columns
    frame[numeric] = frame[numeric].round(DECIMALS)
    return frame


def write_comparison(exp_dir, variants: Optional[Sequence[str]] = None) -> Path:
    """Write ``<exp_dir>/comparison.csv`` atomically; return its path."""
    path = Path(exp_dir) / COMPARISON_CSV
    runs.write_csv_atomic(path, comparison_frame(exp_dir, variants))
    return path


def format_comparison(frame: pd.DataFrame, variants: Sequence[str]) -> str:
    """Model, then test accuracy and training time of each variant and its balanced accuracy on each
    external set (bench-evaluate), as text."""
    external = [c[len(variants[0]) + 5:-len("_balanced_acc")] for c in frame.columns
                if c.startswith(f"{variants[0]}_ext_") and c.endswith("_balanced_acc")] if variants else []
    what = [("test_acc", "test_acc", 4), ("time_s", "train_time_s", 1),
            *((f"{name} bal_acc", f"ext_{name}_balanced_acc", 4) for name in external)]
    header = ["model"] + [f"{v} {label}" for v in variants for label, _, _ in what]
    body = []
    for row in frame.to_dict("records"):
        cells = [str(row["model"])]
        for v in variants:
            for _, column, digits in what:
                value = row.get(f"{v}_{column}")
                cells.append("-" if value is None or math.isnan(value) else f"{value:.{digits}f}")
        body.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in [header, ["-" * w for w in widths], *body]]
    return "\n".join(lines if body else [*lines, "(no runs)"])


def variant_differences(exp_dir, variants: Sequence[str]) -> list[str]:
    """The result-changing settings in which the variants' runs differ, as ``key: a | b`` (from each variant's
    first completed run's config.yaml; the experiment name and paths aside): what a row's difference measures."""
    from omegaconf import OmegaConf

    from bench.config.compose import result_keys

    flat, changing = [], set()
    for v in variants:
        done = [r for r in collect_runs(Path(exp_dir) / v) if r.completed and r.root is not None]
        config = next((r.root / "config.yaml" for r in done if (r.root / "config.yaml").is_file()), None)
        if config is None:
            return []
        container = OmegaConf.to_container(OmegaConf.load(config), resolve=False)
        flat.append(_flatten(container))
        changing |= set(_flatten(result_keys(container)))  # an option at its added-later default is left out
    from bench.config import BenchConfig

    # A config written before an option existed ran at the option's default.
    defaults = _flatten(OmegaConf.to_container(OmegaConf.structured(BenchConfig), resolve=False))
    flat = [{**{k: defaults[k] for k in changing if k in defaults}, **f} for f in flat]
    keys = sorted(k for k in changing if not k.startswith(("experiment_name", "paths.", "model.name", "recipe.")))
    return [f"{k}: " + " | ".join(str(f.get(k, "-")) for f in flat) for k in keys
            if len({repr(f.get(k)) for f in flat}) > 1]


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}{key}.").items()}
    return {prefix[:-1]: value}
