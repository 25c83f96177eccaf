"""``bench-report``: write report.md and its figures for an experiment folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import runs

from bench.metrics import statistics as stats
from bench.report.loading import ExperimentResults, load_results
from bench.report.markdown import FIGURES, report_markdown
from bench.report.plots import (figure_png, plot_accuracy_vs_cost, plot_class_accuracy, plot_confusion,
                                plot_test_accuracy_ci, plot_training_curves)
from bench.report.tables import DEFAULT_TOP, statistics_table

REPORT_DIR = "report"
REPORT_MD = "report.md"


def build_report(exp_dir, out_dir=None, *, top: int = DEFAULT_TOP, n_resamples: int = stats.DEFAULT_RESAMPLES,
                 seed: int = stats.DEFAULT_SEED, confidence: float = stats.DEFAULT_CONFIDENCE,
                 alpha: float = stats.DEFAULT_ALPHA, reference_dir: Path | str | None = "default",
                 ensemble: str | None = None, results: ExperimentResults | None = None) -> Path:
    """Write ``report.md`` and its figures into ``out_dir`` (default ``<exp_dir>/report``);
    return the path of ``report.md``. Every file is written atomically."""
    res = results if results is not None else load_results(exp_dir, reference_dir=reference_dir, ensemble=ensemble)
    out_dir = Path(out_dir) if out_dir is not None else res.exp_dir / REPORT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    st = statistics_table(res, n_resamples=n_resamples, seed=seed, confidence=confidence, alpha=alpha)
    figures: dict[str, Any] = {}
    if len(st):
        figures["ci"] = plot_test_accuracy_ci(res, st)
        figures["gflops"] = plot_accuracy_vs_cost(res, "gflops", st)
        figures["time"] = plot_accuracy_vs_cost(res, "time", st)
    if res.runs:
        figures["classes"] = plot_class_accuracy(res)
        figures["cm_best"] = plot_confusion(res, res.best)
        figures["curves"] = plot_training_curves(res, top)
    if res.ensemble is not None:
        figures["cm_ensemble"] = plot_confusion(res, res.ensemble)
    if res.detectors:
        from bench.report.detection import plot_fields, plot_pr_curves

        figures["det_pr"] = plot_pr_curves(res.detectors[0])
        figures["det_fields"] = plot_fields(res.detectors[0])
    travel = _travel(res, figures, top, n_resamples, seed, confidence)
    tuning = _tuning(res, figures, top)
    for key, fig in figures.items():
        runs.write_bytes_atomic(out_dir / FIGURES[key], figure_png(fig))
    text = report_markdown(res, {k: FIGURES[k] for k in figures}, top=top, n_resamples=n_resamples, seed=seed,
                           confidence=confidence, alpha=alpha, travel=travel,
                           tuning=tuning)
    runs.write_text_atomic(out_dir / REPORT_MD, text)
    return out_dir / REPORT_MD


def _travel(res: ExperimentResults, figures: dict, top: int, n_resamples: int, seed: int, confidence: float):
    """The generalisation section's lines and its figures, when external sets were evaluated (else None)."""
    from bench.report.generalisation import (external_sets, generalisation_markdown, generalisation_table,
                                             plot_reliability, plot_risk_coverage, source_markdown)

    by_source = source_markdown(res)
    if not res.runs or not external_sets(res):
        return by_source or None
    top_entries = res.runs[: min(top, 3)]
    figures["travel_reliability"] = plot_reliability(res, top_entries)
    figures["travel_risk_coverage"] = plot_risk_coverage(res, top_entries)
    table = generalisation_table(res, n_resamples=n_resamples, seed=seed, confidence=confidence)
    return by_source + generalisation_markdown(res, table, {k: FIGURES[k] for k in figures}, confidence)


def _tuning(res: ExperimentResults, figures: dict, top: int) -> list[str]:
    """The tuning section's lines and its figure, when bench-tune left results in the experiment (else [])."""
    from bench.report.tuning import (has_tuning, plot_tuning_history, ranking_agreement, trial_histories,
                                     tuning_markdown, tuning_table)

    if not has_tuning(res.exp_dir):
        return []
    table = tuning_table(res)
    histories = trial_histories(res.exp_dir, table, top)
    why = histories if isinstance(histories, str) else None
    if not why:
        figures["tuning_history"] = plot_tuning_history(histories, table.attrs["key"])
    return tuning_markdown(table, ranking_agreement(table), {k: FIGURES[k] for k in figures}, why)
