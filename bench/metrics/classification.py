"""The metric set, computed once, in one place, with scikit-learn.

The paper's class-wise table (Gavas & Olpadkar 2021, Table 2) reports per-class
*accuracy*, which for a multi-class problem is the class's recall: the share of
images of that class predicted as that class. Their Table 3 adds precision,
sensitivity (= recall) and specificity, macro-averaged one-vs-rest. We report all
of them, plus F1 and support, from the confusion matrix that scikit-learn builds.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
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
    ``y_true`` still gets a row (support 0) so tables always have every column, with its
    accuracy, sensitivity and F1 undefined (None: no image of it was there to find, which is not
    a score of 0) and its precision defined only where it was predicted (then 0.0: every such
    prediction is wrong). A class present but never predicted has precision 0.0 (scikit-learn's
    ``zero_division=0``: a class the model never names gets no credit). Macro averages are over
    the classes present in ``y_true``.
    """
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    specificity = specificity_per_class(y_true, y_pred, labels)
    predicted = np.bincount(y_pred, minlength=len(labels))[: len(labels)] if len(y_pred) else np.zeros(len(labels))
    per_class = {}
    for i, name in enumerate(class_names):
        absent = support[i] == 0
        per_class[name] = {
            "accuracy": None if absent else float(recall[i]),  # class-wise accuracy as in the paper = recall
            "precision": None if absent and predicted[i] == 0 else float(precision[i]),
            "sensitivity": None if absent else float(recall[i]),
            "specificity": float(specificity[i]),
            "f1": None if absent else float(f1[i]),
            "support": int(support[i]),
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
        # Mean recall over the classes present: what accuracy would be on balanced classes.
        "balanced_accuracy": balanced_accuracy(y_true, y_pred),
        "macro": macro,
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def balanced_accuracy(y_true, y_pred) -> float:
    """scikit-learn's balanced accuracy (mean recall over the classes in ``y_true``); 0.0 when empty."""
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    if not len(y_true):
        return 0.0
    with warnings.catch_warnings():  # predicted classes absent from y_true are simply wrong answers
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(y_true, y_pred))


def macro_f1(y_true, y_pred, n_classes: int) -> float:
    """Macro F1 over the classes present in ``y_true`` (as in :func:`classification_metrics`)."""
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    present = sorted(set(y_true.tolist()))
    if not present:
        return 0.0
    return float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0))


# Selection rules: trainer.select_by names the validation number that picks the best epoch and
# ranks the leaderboard. The paper's is accuracy; on imbalanced data a model that predicts the
# majority class has high accuracy and nothing else, which the other two expose.
SELECT_BY = {
    "val_acc": lambda y, p, c: float((np.asarray(y) == np.asarray(p)).mean()) if len(y) else 0.0,
    "val_balanced_acc": lambda y, p, c: balanced_accuracy(y, p),
    "val_macro_f1": lambda y, p, c: macro_f1(y, p, c),
}

# A run "collapsed" when one class takes at least this share of the predictions while it is
# clearly less of the truth: the model learned the class prior, not the cells.
COLLAPSE_SHARE = 0.9


def collapse_warning(y_true, y_pred, class_names: Sequence[str], split: str = "validation") -> str | None:
    """A one-paragraph warning naming the class when (nearly) every prediction is one class, else None."""
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    n = len(y_pred)
    if n < 2 or len(set(y_true.tolist())) < 2:
        return None
    counts = np.bincount(y_pred, minlength=len(class_names))
    top = int(counts.argmax())
    share = counts[top] / n
    truth = float((y_true == top).mean())
    if share < COLLAPSE_SHARE or share - truth < 0.1:
        return None
    predicted = int((counts > 0).sum())
    majority = top == int(np.bincount(y_true, minlength=len(class_names)).argmax())
    cause = ("it learned the majority class, not the cells" if majority
             else "it collapsed onto one class instead of telling the cells apart")
    return (f"the model predicts {class_names[top]!r} for {share:.0%} of the {split} images, where it is "
            f"{truth:.0%} of them ({predicted} of {len(class_names)} classes ever predicted): {cause}. Fixes: "
            "more epochs or another learning rate; on imbalanced classes trainer.class_weights=balanced or "
            "trainer.sampler=balanced and trainer.select_by=val_balanced_acc (the preflight printed the "
            "per-class counts).")


# bench-predict flags an image whose top probability is below this quantile of the top
# probabilities of the validation images the model got right: "less sure than it is on 95 % of
# the cells it classifies correctly".
CONFIDENCE_QUANTILE = 0.05


def confidence_threshold(confidence, correct, quantile: float = CONFIDENCE_QUANTILE,
                         kind: str = "probability") -> dict | None:
    """The low-confidence threshold chosen on validation predictions (never on test), with its rule.

    ``confidence``: per image, the probability of the predicted class (``kind="probability"``) or,
    for a hard vote, the share of votes it got (``"vote_share"``); ``correct``: per image, whether
    the prediction was right. None when no validation prediction was right."""
    confidence, correct = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=bool)
    if not correct.any():
        return None
    what = "top probability" if kind == "probability" else "vote share of the predicted class"
    return {"value": float(np.quantile(confidence[correct], quantile)), "quantile": quantile, "kind": kind,
            "n_correct": int(correct.sum()),
            "rule": f"{quantile:.0%} quantile of the {what} of correct validation predictions"}
