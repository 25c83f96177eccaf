"""The Markdown text of the report: pipe tables, number formatting and the sections of report.md."""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import pandas as pd

from bench.results import rows as leaderboard_rows
from bench.results import published as paper_reference
from bench import runs
from bench.metrics import statistics as stats
from bench.report.loading import ExperimentResults, is_fixed
from bench.report.tables import (DEFAULT_TOP, MACRO_TABLE3, PAPER, class_accuracy_table, comparison_table,
                                 published_class_accuracy, published_left_out, seed_table, statistics_table)

PBC_CITATION = "Acevedo et al., Data in Brief 30 (2020) 105474, CC BY 4.0"

FIGURES = {
    "ci": "test_accuracy_ci.png",
    "classes": "class_accuracy.png",
    "gflops": "accuracy_vs_gflops.png",
    "time": "accuracy_vs_train_time.png",
    "cm_best": "confusion_best.png",
    "cm_ensemble": "confusion_ensemble.png",
    "curves": "training_curves.png",
    "det_pr": "detection_pr_curves.png",
    "det_fields": "detection_fields.png",
    "travel_reliability": "reliability_test.png",
    "travel_risk_coverage": "risk_coverage_test.png",
    "tuning_history": "tuning_history.png",
}


def _esc(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(frame: pd.DataFrame, bold: Sequence[str] = (), index: bool = False) -> str:
    """A Markdown pipe table of already formatted cells; ``bold`` columns have their best
    (largest numeric value; ties all) in bold. Cells are ``str``; numbers are parsed back."""
    if index:
        frame = frame.reset_index()
    cols = list(frame.columns)
    body = frame.astype(object).where(frame.notna(), "-").astype(str)
    numeric = {c: bool(len(body)) and bool((pd.to_numeric(_numeric_text(body[c]), errors="coerce").notna()
                                             | (body[c] == "-")).all()) for c in cols}
    for col in bold:
        if col not in body:
            continue
        values = pd.to_numeric(_numeric_text(body[col]), errors="coerce")
        # All equal (e.g. every model at 0 % on a class): there is no best to mark.
        if values.notna().any() and values.max() > values.min():
            best = values == values.max()
            body.loc[best, col] = "**" + body.loc[best, col] + "**"
    lines = ["| " + " | ".join(_esc(c) for c in cols) + " |",
             "|" + "|".join("---:" if numeric[c] else "---" for c in cols) + "|"]
    lines += ["| " + " | ".join(_esc(v) for v in row) + " |" for row in body.itertuples(index=False)]
    return "\n".join(lines)


def _numeric_text(col: pd.Series) -> pd.Series:
    return col.str.replace("**", "", regex=False).str.rstrip("%").str.replace("−", "-", regex=False)


def _pct(x: Any, digits: int = 2) -> str:
    x = leaderboard_rows._num(x)
    return "-" if not math.isfinite(x) else f"{100 * x:.{digits}f}"


def _p(x: Any) -> str:
    x = leaderboard_rows._num(x)
    if not math.isfinite(x):
        return "-"
    return f"{x:.3f}" if x >= 0.001 else f"{x:.1e}"


def _link(key: str, alt: str) -> str:
    return f"![{alt}]({FIGURES[key]})"


def _statistics_md(res: ExperimentResults, st: pd.DataFrame, alpha: float, confidence: float,
                   n_resamples: int, seed: int) -> list[str]:
    out = []
    cells = []
    # A reference ensemble chosen on test is said in the column's own name, not only in the note.
    ens_col = "p vs ensemble" + (" (selected on test)" if res.ensemble is not None and is_fixed(res.ensemble) else "")
    for r in st.to_dict("records"):
        dist = r["distinguishable_from_best"]
        cells.append({
            "rank": "-" if pd.isna(r["rank"]) else str(r["rank"]),
            "model": r["label"],
            "val acc %": _pct(r["val_acc"]),
            "test acc %": _pct(r["test_acc"]),
            f"{round(100 * confidence)}% CI": "-" if not math.isfinite(r["ci_low"])
            else f"{100 * r['ci_low']:.2f} – {100 * r['ci_high']:.2f}",
            "vs best +/−": "-" if pd.isna(r["only_this"]) else f"+{r['only_this']} / −{r['only_best']}",
            "p vs best": _p(r["p_vs_best"]),
            "Holm": _p(r["p_vs_best_holm"]),
            ens_col: _p(r["p_vs_ensemble"]) if res.ensemble is not None else "-",
            "Holm ": _p(r["p_vs_ensemble_holm"]) if res.ensemble is not None else "-",
            f"differs from best (α={alpha:g})": "-" if dist is None or pd.isna(dist) else ("yes" if dist else "no"),
        })
    frame = pd.DataFrame(cells)
    if res.best is not None:
        frame.iloc[0, -1] = "(best)"
    out.append(md_table(frame, bold=["val acc %"]))
    n = res.n_test()
    one = f"one image is {100 / n:.3g} percentage points" if n else "the number of test images is unknown"
    ens_name = f"the ensemble ({res.ensemble.label})" if res.ensemble is not None else "the ensemble (none here)"
    fixed = [e.label for e in res.ensembles if is_fixed(e)]
    never = ("test never selects" if not fixed else
             f"test never selects, except in {', '.join(fixed)}: the paper chose those members on its test set, "
             "rebuilt here to compare like for like, so its test numbers and any p against it are not a held-out "
             "measurement")
    out.append("")
    out.append(
        f"*How to read this:* rows are ranked by validation accuracy ({never}). "
        f"CI: {round(100 * confidence)}% percentile bootstrap of test accuracy ({n_resamples:,} resamples of the "
        f"test images, seed {seed}). +/−: test images only this model / only the best model gets right. "
        f"p: McNemar's exact test (two-sided binomial test on those discordant images) against the best run "
        f"({res.best.label if res.best else '-'}) and against {ens_name}; Holm: the same p-values adjusted "
        f"(Holm-Bonferroni) for the number of models compared, so that the chance of any false \"differs\" "
        f"stays at {alpha:g}; \"differs\" means the Holm-adjusted p < {alpha:g}. "
        f"Test set: {n if n else '?'} images; {one}.")
    return out


def _fmt_frac_table(table: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    return table.apply(lambda col: col.map(lambda v: _pct(v, digits)))


def _protocol_note(res: ExperimentResults, models: set[str]) -> str:
    """Whether the runs compared with the paper followed its recipe, and if not, how not."""
    differ: dict[str, list[str]] = {}
    for entry in res.runs:
        if entry.model in models:
            text = paper_reference.protocol_text(entry.metrics.get("protocol_deviations"))
            if text == paper_reference.PROTOCOL_UNKNOWN:
                text = "not recorded (written by an older bench)"
            if entry.recipe != paper_reference.PROTOCOL_RECIPE:
                text = f"follows experiment={entry.recipe}, not experiment={paper_reference.PROTOCOL_RECIPE}"
            if text != paper_reference.PROTOCOL_FOLLOWED:
                differ.setdefault(text, []).append(entry.label)
    if not differ:
        return "Every run compared here followed the published protocol."
    parts = [f"{', '.join(labels)}: {text}" for text, labels in differ.items()]
    return ("**Not a replication** where a run departs from the published protocol, so read these "
            "differences with that in mind: " + " | ".join(parts) + ".")


def _left_out_note(res: ExperimentResults, table: str) -> list[str]:
    """Why the published rows of ``table`` are absent for runs of another paper's recipe."""
    left_out = published_left_out(res)
    if not left_out:
        return []
    runs_of = "; ".join(f"{', '.join(labels)} follow experiment={recipe}" for recipe, labels in left_out.items())
    return ["", f"**Not a replication**: {runs_of}, not experiment={paper_reference.PROTOCOL_RECIPE}, so {PAPER}'s published "
            f"{table} numbers are left out; each run's own recipe and its departures from it are in the "
            "leaderboard's protocol column."]


def _data_note(res: ExperimentResults) -> str:
    kind = (res.data_kind or "").lower()
    root = res.data_root or ""
    if kind == "synthetic":
        return (f"Data: the embedded synthetic stand-in (procedurally drawn cells with the PBC class names), "
                f"not real images; its accuracies are not comparable with published numbers. The class scheme "
                f"follows the PBC dataset ({PBC_CITATION}).")
    if kind == "multi_source":
        return (f"Data: several labs' images (data=multi_source: `{root}`), classes {', '.join(res.classes) or '-'}. "
                f"Published numbers are for the PBC dataset alone ({PBC_CITATION}): with other labs in training "
                "or test this is not a replication.")
    if not paper_reference.is_pbc_classes(res.classes):
        return (f"Data: `{root or 'unknown'}`, classes {', '.join(res.classes) or '-'}. The published numbers are "
                f"for the PBC dataset's eight classes ({PBC_CITATION}), so none is shown next to these.")
    looks_pbc = kind == "bloodmnist" or "pbc" in root.lower()
    if looks_pbc:
        what = "BloodMNIST, derived from the PBC dataset" if kind == "bloodmnist" else "the PBC dataset"
        return f"Data: {what} ({PBC_CITATION})."
    return (f"Data: `{root or 'unknown'}`, with PBC's class names. Published reference numbers are for the PBC "
            f"dataset ({PBC_CITATION}): a comparison holds only if this is PBC.")


def _no_runs(res: ExperimentResults) -> str:
    return "No classifier runs here (the detectors are below)." if res.detectors else "No completed runs yet."


def _detection_md(res: ExperimentResults, figures: dict[str, str]) -> list[str]:
    """The detectors: COCO metrics and the count error, the best one's PR curves and a few fields."""
    from bench.report.detection import detection_table

    table = detection_table(res.detectors)
    cells = table.copy()
    for col in table.columns[1:]:
        cells[col] = [f"{v:.3f}" if math.isfinite(v) else "-" for v in table[col]]
    best = res.detectors[0]
    lines = ["", "## Detection", "",
             "COCO mAP@[.5:.95] on validation (selects the best epoch and ranks) and test, AP50, AP75, AR@100 and "
             "per-class AP on test (pycocotools, recomputable from each run's ground_truth_test.json and "
             "predictions_test.json); count error: mean |predicted - true| cells per test image and class at each "
             "class's score threshold chosen on validation.", "",
             md_table(cells, bold=["val mAP"])]
    if "det_pr" in figures:
        lines += ["", f"Best detector by validation mAP: **{best.label}**.", "", _link("det_pr", "precision-recall")]
    if "det_fields" in figures:
        lines += ["", _link("det_fields", "test fields with true and predicted boxes")]
    return lines


def _with_support(res: ExperimentResults, columns: list[str]) -> list[str]:
    """Class columns as ``name (n=K)``: a per-class number means little without its image count."""
    support = res.class_support()
    return [f"{c} (n={support[c]})" if c in support else c for c in columns]


def _warnings_md(res: ExperimentResults) -> list[str]:
    """What the runs warned about (a run predicting one class, classes left out, ...), so a number in
    the tables above is never read without it."""
    rows = [(e.label, w) for e in res.runs for w in (e.metrics.get("warnings") or [])]
    if not rows:
        return []
    return ["", "## Warnings", "", f"{len(rows)} warning(s) from {len({r for r, _ in rows})} run(s); read the "
            "numbers above with them.", "", md_table(pd.DataFrame(rows, columns=["run", "warning"]))]


def report_markdown(res: ExperimentResults, figures: dict[str, str], *, top: int = DEFAULT_TOP,
                    n_resamples: int = stats.DEFAULT_RESAMPLES, seed: int = stats.DEFAULT_SEED,
                    confidence: float = stats.DEFAULT_CONFIDENCE, alpha: float = stats.DEFAULT_ALPHA,
                    travel: Sequence[str] = (), tuning: Sequence[str] = ()) -> str:
    """The Markdown text of the report; ``figures`` maps figure keys (:data:`FIGURES`) that were written;
    ``travel``: the lines of the generalisation section (:mod:`bench.report.generalisation`), when
    external sets were evaluated; ``tuning``: those of the tuning section (:mod:`bench.report.tuning`)."""
    st = statistics_table(res, n_resamples=n_resamples, seed=seed, confidence=confidence, alpha=alpha)
    lines = _header_md(res)
    if res.runs or res.ensembles:
        lines += _statistics_md(res, st, alpha, confidence, n_resamples, seed)
        if "ci" in figures:
            lines += ["", _link("ci", "test accuracy with 95% bootstrap intervals")]
    else:
        lines.append(_no_runs(res))
    if res.several_seeds:
        lines += _seeds_md(res)
    class_lines, published_in_classes = _class_accuracy_md(res, figures)
    comparison_lines, published_in_comparison = _comparison_md(res, top)
    lines += class_lines + comparison_lines + _figures_md(res, figures, top)
    lines += list(travel or []) + list(tuning or [])
    if res.detectors:
        lines += _detection_md(res, figures)
    lines += _warnings_md(res) + _unfinished_md(res)
    source = (f" Published numbers: {PAPER}, arXiv:2110.09508."
              if published_in_classes or published_in_comparison else "")
    lines += ["", "---", "", _data_note(res) + source, ""]
    return "\n".join(lines)


def _header_md(res: ExperimentResults) -> list[str]:
    models = sorted({e.model for e in res.runs})
    n_unfinished = len(res.unfinished)
    failed = int((res.unfinished["status"] == runs.STATUS_FAILED).sum()) if n_unfinished else 0
    return [
        f"# Report: {res.name}",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M')} by `bench-report` from `{res.exp_dir}`. "
        f"{len(res.runs)} completed run(s) of {len(models)} model(s), {failed} failed, "
        f"{n_unfinished - failed} not finished; {len(res.ensembles)} ensemble(s). "
        f"Test images: {res.n_test() or '-'}. "
        "\"Best\" always means best by **validation** accuracy; test numbers are reported, never used to choose.",
        "",
        "## Ranking with uncertainty",
        "",
    ]


def _seeds_md(res: ExperimentResults) -> list[str]:
    seeds = seed_table(res)
    cells = pd.DataFrame({
        "model": seeds["model"], "seeds": seeds["n_seeds"].astype(str),
        **{f"{split} acc % (mean ± sd)": [f"{_pct(m)} ± {_pct(s)}" for m, s in
                                         zip(seeds[f"{split}_acc_mean"], seeds[f"{split}_acc_std"])]
           for split in ("val", "test")},
    })
    return ["", "## Across seeds", "",
            "Mean and sample standard deviation over the completed seeds of each model "
            "(sd `-` for a single seed).", "", md_table(cells)]


def _class_accuracy_md(res: ExperimentResults, figures: dict[str, str]) -> tuple[list[str], bool]:
    """The class-wise section, and whether it shows published numbers (only beside runs of their recipe)."""
    classes = class_accuracy_table(res)
    published = published_class_accuracy(res) if len(classes) else None
    lines = ["", "## Class-wise test accuracy" + (" (as the paper's Table 2)" if published is not None else ""), ""]
    if not len(classes):
        return lines + [_no_runs(res)], False
    mean_note = " Models with several seeds: mean over seeds." if res.several_seeds else ""
    shown = _fmt_frac_table(classes)
    shown.columns = _with_support(res, list(classes.columns))
    lines += [f"Accuracy per class (= recall), %; n = test images of the class; best per column in bold; rows "
              f"by validation accuracy.{mean_note}", "", md_table(shown, bold=list(shown.columns), index=True)]
    if published is not None:
        shown = _fmt_frac_table(published.drop(columns="ours_minus_paper"))
        shown["ours − paper (overall)"] = [f"{100 * d:+.2f}" if math.isfinite(d) else "-"
                                          for d in published["ours_minus_paper"]]
        lines += ["", f"Published class-wise accuracy for the same models ({PAPER}, Table 2), %. "
                  "Their split is not ours: differences of a few tenths are within split-to-split noise; "
                  "ours − paper only for models whose every run followed the recipe. "
                  + _protocol_note(res, set(published.index)),
                  "", md_table(shown, bold=list(published.columns.drop("ours_minus_paper")), index=True)]
    lines += _left_out_note(res, "Table 2")
    if "classes" in figures:
        lines += ["", _link("classes", "class-wise test accuracy heatmap")]
    return lines, published is not None


def _comparison_md(res: ExperimentResults, top: int) -> tuple[list[str], bool]:
    """Test accuracy and macro metrics of the top runs and the ensembles, with the paper's Table 3 rows
    when the runs follow its recipe; and whether those published rows are shown."""
    comp = comparison_table(res, top=top)
    ours = comp["source"] == "this experiment"
    published = bool((~ours).any())
    lines = ["", "## Comparison with published results (as the paper's Table 3)" if published
             else "## Test accuracy and macro metrics", ""]
    if not len(comp):
        return lines + [_no_runs(res)], published
    cells = comp.copy()
    for col in ("accuracy", *MACRO_TABLE3):
        cells[col] = [f"{v:.2f}" if math.isfinite(v) else "-" for v in comp[col]]
    table = md_table(cells[ours], bold=["accuracy", *MACRO_TABLE3])
    if published:
        table += "\n" + "\n".join(md_table(cells[~ours]).splitlines()[2:])
    fixed = [e.model for e in res.ensembles if is_fixed(e)]
    fixed_note = (f" {', '.join(fixed)}: the paper's own four models, fixed and hard-voted, to compare with its "
                  "ensemble like for like (the paper chose them on its test set, which this harness never does: "
                  "the ensembles chosen on validation are the honest headline)." if fixed else "")
    replication = (" " + _protocol_note(res, {e.model for e in res.runs})) if published else ""
    lines += [f"Test accuracy and macro (one-vs-rest) precision, sensitivity, specificity, %, for the top {top} "
              "models by validation accuracy and the ensembles"
              + (f", then the published numbers ({PAPER}, Table 3)" if published else "")
              + ". Bold: best of this experiment." + fixed_note + replication, "", table]
    return lines + _left_out_note(res, "Table 3"), published


def _figures_md(res: ExperimentResults, figures: dict[str, str], top: int) -> list[str]:
    """Accuracy vs cost, the confusion matrices and the training curves (those that were drawn)."""
    lines = []
    if "gflops" in figures or "time" in figures:
        lines += ["", "## Accuracy vs cost", "",
                  "Test accuracy with its 95% bootstrap interval against compute (GFLOPs per image) and training "
                  "time; stars are ensembles (sum over members). Red rings: the Pareto front on **validation** "
                  "accuracy (no other entry is both cheaper and better on validation), so on test the line need "
                  "not rise monotonically.", ""]
        lines += [_link(k, alt) for k, alt in (("gflops", "accuracy vs GFLOPs"), ("time", "accuracy vs training time"))
                  if k in figures]
    if "cm_best" in figures or "cm_ensemble" in figures:
        lines += ["", "## Confusion matrices (test)", ""]
        if "cm_best" in figures:
            lines += [f"Best single model by validation accuracy: **{res.best.label}**.", "",
                      _link("cm_best", f"confusion matrix of {res.best.label}"), ""]
        if "cm_ensemble" in figures:
            lines += [f"Ensemble: **{res.ensemble.model}**.", "",
                      _link("cm_ensemble", f"confusion matrix of ensemble {res.ensemble.model}")]
    if "curves" in figures:
        lines += ["", "## Training curves", "",
                  f"Loss and accuracy per epoch of the top {min(top, len(res.runs))} run(s) by validation accuracy.",
                  "", _link("curves", "training curves")]
    return lines


def _unfinished_md(res: ExperimentResults) -> list[str]:
    lines = ["", "## Failed and unfinished runs", ""]
    if not len(res.unfinished):
        return lines + ["None."]
    cells = res.unfinished.copy()
    cells["seed"] = cells["seed"].astype(object).where(cells["seed"].notna(), "-").astype(str)
    cells["error"] = cells["error"].astype(object).where(cells["error"].notna(), "")
    return lines + [md_table(cells)]
