"""Numbers from predictions: the classification metric set and the selection rules
(:mod:`.classification`), and the uncertainty of an accuracy measured on one test set
(:mod:`.statistics`: bootstrap, McNemar, Holm). Pure functions on arrays, from scikit-learn,
SciPy and statsmodels.
"""

from bench.metrics import statistics
from bench.metrics.classification import (CONFIDENCE_QUANTILE, MACRO_KEYS, PER_CLASS_KEYS, SELECT_BY,
                                          balanced_accuracy, classification_metrics, collapse_warning,
                                          confidence_threshold, macro_f1, specificity_per_class)

__all__ = [
    "classification_metrics", "balanced_accuracy", "macro_f1", "specificity_per_class", "collapse_warning",
    "confidence_threshold", "SELECT_BY", "MACRO_KEYS", "PER_CLASS_KEYS", "CONFIDENCE_QUANTILE", "statistics",
]
