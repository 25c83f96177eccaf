"""The metric set, computed once, in one place, with scikit-learn.

The paper's class-wise table (Gavas & Olpadkar 2021, Table 2) reports per-class
*accuracy*, which for a multi-class problem is the class's recall: the share of
images of that class predicted as that class. Their Table 3 adds precision,
sensitivity (= recall) and specificity, macro-averaged one-vs-rest. We report all
of them, plus F1 and support, from the confusion matrix that scikit-learn builds.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
)

# Names used as keys in metrics.json and as leaderboard columns; defined once.
PER_CLASS_KEYS = ("accuracy", "precision", "sensitivity", "specificity", "f1", "support")
MACRO_KEYS = ("precision", "sensitivity", "specificity", "f1")


def specificity_per_class(y_true, y_pred, labels) -> np.ndarray:
    """One-vs-rest specificity TN / (TN + FP) per class, from sklearn's per-class matrices.

    A class that never appears as a negative (a one-class problem) has no defined
    specificity; it gets 0.0 like sklearn's zero_division default.
    """
    mcm = multilabel_confusion_matrix(y_true, y_pred, labels=labels)
    tn, fp = mcm[:, 0, 0], mcm[:, 0, 1]
    denom = tn + fp
    return np.divide(tn, denom, out=np.zeros(len(labels), dtype=float), where=denom > 0)


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str]) -> dict:
    """The full metric set for one split, JSON-serialisable.

    Classes are indexed 0..C-1 in the order of ``class_names``; a class absent from
    ``y_true`` still gets a row (support 0) so tables always have every column.
    """
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    specificity = specificity_per_class(y_true, y_pred, labels)
    per_class = {
        name: {
            "accuracy": float(recall[i]),  # class-wise accuracy as in the paper = recall
            "precision": float(precision[i]),
            "sensitivity": float(recall[i]),
            "specificity": float(specificity[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    }
    # Macro averages over classes present in y_true, as sklearn's average="macro"
    # would do with labels restricted to those classes.
    present = support > 0
    macro = {
        "precision": float(precision[present].mean()) if present.any() else 0.0,
        "sensitivity": float(recall[present].mean()) if present.any() else 0.0,
        "specificity": float(specificity[present].mean()) if present.any() else 0.0,
        "f1": float(f1[present].mean()) if present.any() else 0.0,
    }
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)) if len(y_true) else 0.0,
        "macro": macro,
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
