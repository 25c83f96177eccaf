"""A readable report of one experiment: tables, figures and honest statistics.

``bench-report results/<experiment>`` (or :func:`build_report`) reads the run folders
and ensembles of an experiment (nothing is trained or evaluated again) and writes::

    <experiment>/report/
        report.md                    Markdown with pipe tables, linking the figures below
        test_accuracy_ci.png         test accuracy with 95% bootstrap intervals, in rank order
        class_accuracy.png           class-wise test accuracy, models x classes (heatmap)
        accuracy_vs_gflops.png       test accuracy against compute, Pareto front marked
        accuracy_vs_train_time.png   test accuracy against training time, Pareto front marked
        confusion_best.png           counts and row percentages, best single model
        confusion_ensemble.png       the same for the ensemble (if there is one)
        training_curves.png          loss and accuracy per epoch, train and validation, top models
        tuning_history.png           best-so-far validation value per trial, top models (after bench-tune)

Selection never looks at test data: "best" is the run ranked first by *validation*
accuracy (the leaderboard's rank, :mod:`bench.results.leaderboard`), "the ensemble" is the
ensemble with the highest validation accuracy, "top models" are the first by validation
accuracy, and the Pareto front is computed on validation accuracy. Test numbers are
only reported, with their uncertainty (:mod:`bench.metrics.statistics`): a percentile-bootstrap 95%
interval per run and McNemar's exact test of every run against the best run and
against the ensemble, all on the saved per-image test predictions.

The same pieces are public for the notebook (``notebooks/leaderboard.ipynb``):
:func:`load_results` gives an :class:`ExperimentResults`, and the ``*_table`` and
``plot_*`` functions return DataFrames and matplotlib Figures. Figures are drawn with
the object-oriented API on the Agg canvas (no pyplot, no display needed).

Modules (imports only go down): :mod:`~bench.report.run` (:func:`build_report`; the console
script is :mod:`bench.cli.report`) -> :mod:`~bench.report.markdown` and :mod:`~bench.report.plots` ->
:mod:`~bench.report.tables` -> :mod:`~bench.report.loading`. Their public names are
re-exported here. Sections that appear only when their files exist have their own modules:
:mod:`~bench.report.detection`, :mod:`~bench.report.generalisation` (external sets),
:mod:`~bench.report.tuning` (bench-tune: default vs tuned); :mod:`~bench.report.cascade` writes the smear
chain's own report.
"""

from bench.report.run import REPORT_DIR, REPORT_MD, build_report
from bench.report.loading import TABLE2_CSV, TABLE3_CSV, Entry, ExperimentResults, Predictions, load_results
from bench.results.published import PBC_CLASSES
from bench.report.markdown import FIGURES, PBC_CITATION, md_table, report_markdown
from bench.report.plots import (COSTS, DPI, figure_png, plot_accuracy_vs_cost, plot_class_accuracy, plot_confusion,
                                plot_test_accuracy_ci, plot_training_curves)
from bench.report.tables import (DEFAULT_TOP, MACRO_TABLE3, PAPER, STATS_COLUMNS, class_accuracy_table,
                                 comparison_table, published_class_accuracy, seed_table, statistics_table,
                                 unfinished_table)

__all__ = [
    # loading
    "Entry", "ExperimentResults", "Predictions", "load_results", "TABLE2_CSV", "TABLE3_CSV",
    # tables
    "statistics_table", "seed_table", "class_accuracy_table", "published_class_accuracy", "comparison_table",
    "unfinished_table", "DEFAULT_TOP", "MACRO_TABLE3", "PAPER", "STATS_COLUMNS",
    # plots
    "figure_png", "plot_test_accuracy_ci", "plot_class_accuracy", "plot_accuracy_vs_cost", "plot_confusion",
    "plot_training_curves", "COSTS", "DPI",
    # markdown
    "md_table", "report_markdown", "FIGURES", "PBC_CITATION", "PBC_CLASSES",
    # the report
    "build_report", "REPORT_DIR", "REPORT_MD",
]
