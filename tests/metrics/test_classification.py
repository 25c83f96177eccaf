"""The metric set (bench.metrics.classification), worked out by hand in the test for every rule
that turns predictions into numbers: the confusion matrix, per-class and macro numbers, absent
and never-predicted classes, ties, balanced accuracy, a run that predicts one class, the
low-confidence threshold.

None of the expected values here comes from the code under test: each is written out from the
definition (a confusion matrix counted on paper), so a formula changed in ``bench`` makes these
fail."""

from __future__ import annotations

from fractions import Fraction as F

import numpy as np
import pytest
import torch
import torch.nn as nn

from bench.metrics import classification_metrics, balanced_accuracy, collapse_warning, confidence_threshold
from bench.training.engine import evaluate


# --------------------------------------------------------------------------- the metric set
# Ten images, three classes. Counted on paper (rows = true class, columns = predicted):
#
#            pred a  pred b  pred c   | support
#   true a     2       1       1      |   4
#   true b     1       2       0      |   3
#   true c     0       1       2      |   3
#
# The matrix is not symmetric, so reading it transposed gives other numbers.
Y_TRUE = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]


Y_PRED = [0, 0, 1, 2, 1, 1, 0, 2, 2, 1]


CLASSES = ["a", "b", "c"]


# One-vs-rest counts per class: TP, FN (rest of the row), FP (rest of the column), TN (the rest).
#   a: TP 2, FN 2, FP 1, TN 5      b: TP 2, FN 1, FP 2, TN 5      c: TP 2, FN 1, FP 1, TN 6
HAND = {
    "a": {"precision": F(2, 3), "sensitivity": F(2, 4), "specificity": F(5, 6), "support": 4},
    "b": {"precision": F(2, 4), "sensitivity": F(2, 3), "specificity": F(5, 7), "support": 3},
    "c": {"precision": F(2, 3), "sensitivity": F(2, 3), "specificity": F(6, 7), "support": 3},
}
for _row in HAND.values():
    _p, _r = _row["precision"], _row["sensitivity"]
    _row["f1"] = 2 * _p * _r / (_p + _r)  # a: 4/7, b: 4/7, c: 2/3


@pytest.mark.known_answer
def test_confusion_matrix_rows_are_true_labels():
    m = classification_metrics(Y_TRUE, Y_PRED, CLASSES)
    assert m["confusion_matrix"] == [[2, 1, 1], [1, 2, 0], [0, 1, 2]]
    assert m["n"] == 10 and m["accuracy"] == pytest.approx(6 / 10)


@pytest.mark.known_answer
@pytest.mark.parametrize("name", CLASSES)
def test_per_class_metrics_by_hand(name):
    row = classification_metrics(Y_TRUE, Y_PRED, CLASSES)["per_class"][name]
    hand = HAND[name]
    assert row["support"] == hand["support"]
    for key in ("precision", "sensitivity", "specificity", "f1"):
        assert row[key] == pytest.approx(float(hand[key]), abs=1e-12), key
    # The paper's class-wise accuracy (its Table 2) is the share of the class predicted right.
    assert row["accuracy"] == pytest.approx(float(hand["sensitivity"]), abs=1e-12)


@pytest.mark.known_answer
def test_macro_averages_by_hand():
    macro = classification_metrics(Y_TRUE, Y_PRED, CLASSES)["macro"]
    for key in ("precision", "sensitivity", "specificity", "f1"):
        expected = sum(HAND[c][key] for c in CLASSES) / 3
        assert macro[key] == pytest.approx(float(expected), abs=1e-12), key
    assert macro["specificity"] == pytest.approx((5 / 6 + 5 / 7 + 6 / 7) / 3)
    assert macro["f1"] == pytest.approx((4 / 7 + 4 / 7 + 2 / 3) / 3)


@pytest.mark.known_answer
def test_a_class_absent_from_the_truth_has_a_row_and_no_say_in_the_macro():
    # A fourth class nobody has and nobody predicts: support 0, and the macro averages of
    # the three real classes are unchanged (averaging a 0 in would pull them down by a quarter).
    m = classification_metrics(Y_TRUE, Y_PRED, [*CLASSES, "d"])
    assert m["per_class"]["d"]["support"] == 0
    assert m["macro"]["sensitivity"] == pytest.approx(float(sum(HAND[c]["sensitivity"] for c in CLASSES) / 3))
    assert m["confusion_matrix"][3] == [0, 0, 0, 0]
    # Predicting the absent class is still a false positive for it and an error for the truth.
    wrong = classification_metrics([0, 1], [3, 1], ["a", "b", "c", "d"])
    assert wrong["per_class"]["d"]["precision"] == 0.0 and wrong["per_class"]["a"]["sensitivity"] == 0.0
    assert wrong["per_class"]["d"]["specificity"] == pytest.approx(1 / 2)  # TN 1, FP 1


# Every number metrics.json reports, for a case with an absent class, a never-predicted class and a
# tie, written out by hand (issue 24). Four classes, seven images; the last one's two top logits tie.
#
#            pred a  pred b  pred c  pred d  | support
#   true a     2       1       0       0     |   3
#   true b     0       1       0       1     |   2
#   true c     1       1       0       0     |   2     (c is never predicted)
#   true d     0       0       0       0     |   0     (d is absent, predicted once)
#
#   a: TP 2, FN 1, FP 1, TN 3   b: TP 1, FN 1, FP 2, TN 3   c: TP 0, FN 2, FP 0, TN 5   d: TP 0, FN 0, FP 1, TN 6
FULL_LOGITS = [[3, 0, 0, 0], [3, 0, 0, 0], [0, 3, 0, 0], [0, 3, 0, 0], [0, 0, 0, 3], [3, 0, 0, 0],
               [0, 2, 2, 0]]  # the tie: b and c equal, argmax takes the first, b


FULL_TRUE = [0, 0, 0, 1, 1, 2, 2]


# (the third image, true a, is predicted b; the sixth, true c, is predicted a)
FULL_EXPECTED = {
    "n": 7,
    "accuracy": 3 / 7,
    "balanced_accuracy": (2 / 3 + 1 / 2 + 0) / 3,  # mean recall over the classes present: 7/18
    "macro": {"precision": (2 / 3 + 1 / 3 + 0) / 3, "sensitivity": (2 / 3 + 1 / 2 + 0) / 3,
              "specificity": (3 / 4 + 3 / 5 + 5 / 5) / 3, "f1": (2 / 3 + 2 / 5 + 0) / 3},
    "per_class": {
        "a": {"accuracy": 2 / 3, "precision": 2 / 3, "sensitivity": 2 / 3, "specificity": 3 / 4, "f1": 2 / 3,
              "support": 3},
        # F1 of b: 2 P R / (P + R) = 2 (1/3)(1/2) / (5/6) = 2/5
        "b": {"accuracy": 1 / 2, "precision": 1 / 3, "sensitivity": 1 / 2, "specificity": 3 / 5, "f1": 2 / 5,
              "support": 2},
        # Never predicted: precision 0/0 counted as 0 (no credit for a class never named), recall 0.
        "c": {"accuracy": 0.0, "precision": 0.0, "sensitivity": 0.0, "specificity": 1.0, "f1": 0.0, "support": 2},
        # Absent: nothing to find, so accuracy, sensitivity and F1 are undefined; its one prediction is wrong.
        "d": {"accuracy": None, "precision": 0.0, "sensitivity": None, "specificity": 6 / 7, "f1": None,
              "support": 0},
    },
    "confusion_matrix": [[2, 1, 0, 0], [0, 1, 0, 1], [1, 1, 0, 0], [0, 0, 0, 0]],
}


@pytest.mark.known_answer
def test_every_number_of_the_metric_set_by_hand_with_an_absent_class_a_never_predicted_one_and_a_tie():
    class Fixed(nn.Module):  # returns the hand-written logits, whatever the images
        def forward(self, x):
            return torch.tensor(FULL_LOGITS, dtype=torch.float32)[x[:, 0, 0, 0].long()]

    x = torch.arange(7, dtype=torch.float32).view(7, 1, 1, 1).expand(7, 3, 1, 1)
    out = evaluate(Fixed(), [(x, torch.tensor(FULL_TRUE))], nn.CrossEntropyLoss(), device=torch.device("cpu"))
    assert out["preds"].tolist() == [0, 0, 1, 1, 3, 0, 1]  # the tie went to b, the first of the two
    got = classification_metrics(out["labels"], out["preds"], ["a", "b", "c", "d"])
    assert set(got) == set(FULL_EXPECTED)
    assert got["confusion_matrix"] == FULL_EXPECTED["confusion_matrix"]
    for key in ("n", "accuracy", "balanced_accuracy"):
        assert got[key] == pytest.approx(FULL_EXPECTED[key]), key
    assert got["macro"] == pytest.approx(FULL_EXPECTED["macro"])
    for cls, expected in FULL_EXPECTED["per_class"].items():
        assert set(got["per_class"][cls]) == set(expected)
        for key, value in expected.items():
            assert (got["per_class"][cls][key] is None) if value is None else (
                got["per_class"][cls][key] == pytest.approx(value)), (cls, key, got["per_class"][cls][key])


@pytest.mark.known_answer
def test_an_absent_class_that_is_never_predicted_has_no_precision_either():
    m = classification_metrics([0, 1], [0, 1], ["a", "b", "c"])
    assert m["per_class"]["c"] == {"accuracy": None, "precision": None, "sensitivity": None, "specificity": 1.0,
                                   "f1": None, "support": 0}


@pytest.mark.known_answer
def test_perfect_and_all_wrong_predictions():
    perfect = classification_metrics([0, 1, 2, 2], [0, 1, 2, 2], CLASSES)
    assert perfect["accuracy"] == 1.0
    assert all(v == 1.0 for v in perfect["macro"].values())
    wrong = classification_metrics([0, 1, 2], [1, 2, 0], CLASSES)
    assert wrong["accuracy"] == 0.0
    assert wrong["macro"]["sensitivity"] == 0.0
    assert wrong["macro"]["specificity"] == pytest.approx(1 / 2)  # each class: TN 1, FP 1


# --------------------------------------------------------------------------- numbers
@pytest.mark.own_data
@pytest.mark.known_answer
def test_balanced_accuracy_by_hand():
    # Recall per class 2/4, 2/3, 2/3 (the confusion matrix of test_known_answers): mean 11/18.
    y_true = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    y_pred = [0, 0, 1, 2, 1, 1, 0, 2, 2, 1]
    assert balanced_accuracy(y_true, y_pred) == pytest.approx(11 / 18)
    assert classification_metrics(y_true, y_pred, ["a", "b", "c"])["balanced_accuracy"] == pytest.approx(11 / 18)
    # Majority-class-only predictions: 59 % accuracy, 50 % balanced accuracy on two classes.
    y = [0] * 59 + [1] * 41
    assert balanced_accuracy(y, [0] * 100) == pytest.approx(0.5)


@pytest.mark.own_data
def test_a_run_predicting_one_class_is_named():
    names = ["lymphocyte", "neutrophil", "platelet"]
    y_true = [1] * 59 + [0] * 30 + [2] * 11
    text = collapse_warning(y_true, [1] * 100, names)
    assert "'neutrophil'" in text and "100%" in text and "59%" in text and "class_weights=balanced" in text
    assert collapse_warning(y_true, y_true, names) is None  # a good model
    assert collapse_warning([1] * 95 + [0] * 5, [1] * 100, names) is None  # the truth is (almost) one class


@pytest.mark.own_data
def test_low_confidence_threshold_is_a_quantile_of_correct_validation_predictions():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.7, 0.3], [0.45, 0.55]])
    labels = np.array([0, 0, 1, 1, 1])  # correct: rows 0, 1, 2, 4 with top 0.9, 0.6, 0.8, 0.55
    got = confidence_threshold(probs.max(1), probs.argmax(1) == labels, quantile=0.5)
    assert got["value"] == pytest.approx(np.median([0.9, 0.6, 0.8, 0.55])) and got["n_correct"] == 4
