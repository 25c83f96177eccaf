"""Known answers, worked out by hand in the test, for every rule that turns tensors into numbers.

None of the expected values here comes from the code under test: each is written out from
the definition (a confusion matrix counted on paper, a loss written with
``torch.nn.functional``), so a formula changed in ``bench`` makes these fail.
"""

from __future__ import annotations

from fractions import Fraction as F

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as tnf

from bench import runs
from bench.runs import atomic, disk_errors as write_errors
from bench.training.engine import compute_loss, evaluate, split_outputs, train_one_epoch
from bench.metrics import classification_metrics

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


def test_confusion_matrix_rows_are_true_labels():
    m = classification_metrics(Y_TRUE, Y_PRED, CLASSES)
    assert m["confusion_matrix"] == [[2, 1, 1], [1, 2, 0], [0, 1, 2]]
    assert m["n"] == 10 and m["accuracy"] == pytest.approx(6 / 10)


@pytest.mark.parametrize("name", CLASSES)
def test_per_class_metrics_by_hand(name):
    row = classification_metrics(Y_TRUE, Y_PRED, CLASSES)["per_class"][name]
    hand = HAND[name]
    assert row["support"] == hand["support"]
    for key in ("precision", "sensitivity", "specificity", "f1"):
        assert row[key] == pytest.approx(float(hand[key]), abs=1e-12), key
    # The paper's class-wise accuracy (its Table 2) is the share of the class predicted right.
    assert row["accuracy"] == pytest.approx(float(hand["sensitivity"]), abs=1e-12)


def test_macro_averages_by_hand():
    macro = classification_metrics(Y_TRUE, Y_PRED, CLASSES)["macro"]
    for key in ("precision", "sensitivity", "specificity", "f1"):
        expected = sum(HAND[c][key] for c in CLASSES) / 3
        assert macro[key] == pytest.approx(float(expected), abs=1e-12), key
    assert macro["specificity"] == pytest.approx((5 / 6 + 5 / 7 + 6 / 7) / 3)
    assert macro["f1"] == pytest.approx((4 / 7 + 4 / 7 + 2 / 3) / 3)


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


def test_an_absent_class_that_is_never_predicted_has_no_precision_either():
    m = classification_metrics([0, 1], [0, 1], ["a", "b", "c"])
    assert m["per_class"]["c"] == {"accuracy": None, "precision": None, "sensitivity": None, "specificity": 1.0,
                                   "f1": None, "support": 0}


def test_perfect_and_all_wrong_predictions():
    perfect = classification_metrics([0, 1, 2, 2], [0, 1, 2, 2], CLASSES)
    assert perfect["accuracy"] == 1.0
    assert all(v == 1.0 for v in perfect["macro"].values())
    wrong = classification_metrics([0, 1, 2], [1, 2, 0], CLASSES)
    assert wrong["accuracy"] == 0.0
    assert wrong["macro"]["sensitivity"] == 0.0
    assert wrong["macro"]["specificity"] == pytest.approx(1 / 2)  # each class: TN 1, FP 1


# --------------------------------------------------------------------------- loss assembly
def _inception_outputs(name: str, size: int):
    from bench.models import create_model, get_model_spec

    torch.manual_seed(0)
    model = create_model(name, num_classes=4, pretrained=False).train()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        return model(x), get_model_spec(name)


def test_inception_loss_is_main_plus_0_4_aux():
    outputs, spec = _inception_outputs("inception_v3", 299)
    main, aux = outputs.logits, outputs.aux_logits
    assert aux is not None and not torch.equal(main, aux)
    y = torch.tensor([1, 3])
    loss, logits = compute_loss(outputs, y, nn.CrossEntropyLoss(), spec.aux_weight)
    # Szegedy et al. 2016 / torchvision's recipe: total = main + 0.4 * auxiliary.
    expected = tnf.cross_entropy(main, y) + 0.4 * tnf.cross_entropy(aux, y)
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert torch.equal(logits, main)


def test_googlenet_is_built_without_aux_heads_so_its_loss_is_the_main_head():
    outputs, spec = _inception_outputs("googlenet", 64)
    main, aux = split_outputs(outputs)
    assert aux == []
    y = torch.tensor([0, 2])
    loss, _ = compute_loss(outputs, y, nn.CrossEntropyLoss(), spec.aux_weight)
    assert float(loss) == pytest.approx(float(tnf.cross_entropy(main, y)), rel=1e-6)


class _WithAux(nn.Module):
    """A linear model that also returns an 'auxiliary' head, as Inception does in train mode."""

    def __init__(self):
        super().__init__()
        self.main, self.aux = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x):
        from torchvision.models.inception import InceptionOutputs

        return InceptionOutputs(self.main(x), self.aux(x)) if self.training else self.main(x)


def test_the_training_loop_reports_the_assembled_loss():
    torch.manual_seed(1)
    model, x, y = _WithAux(), torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        expected = tnf.cross_entropy(model.main(x), y) + 0.4 * tnf.cross_entropy(model.aux(x), y)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = train_one_epoch(model, [(x, y)], opt, nn.CrossEntropyLoss(), device=torch.device("cpu"), aux_weight=0.4)
    assert out["loss"] == pytest.approx(float(expected), rel=1e-6)  # the loss before the step
    assert out["n"] == 6


# --------------------------------------------------------------------------- gradient accumulation
def _one_step(batches, grad_accum, momentum=0.9):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))  # no BatchNorm: batch-size free
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=momentum)
    train_one_epoch(model, batches, opt, nn.CrossEntropyLoss(), device=torch.device("cpu"), grad_accum=grad_accum)
    return model.state_dict(), opt.state_dict()


def test_two_accumulated_micro_batches_equal_one_full_batch_step():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)
    full, full_opt = _one_step([(x, y)], grad_accum=1)
    accum, accum_opt = _one_step([(x[:4], y[:4]), (x[4:], y[4:])], grad_accum=2)
    for key in full:
        torch.testing.assert_close(accum[key], full[key], rtol=1e-5, atol=1e-6)
    # The momentum buffers (one SGD step) are the full-batch gradient too.
    for k, state in full_opt["state"].items():
        torch.testing.assert_close(accum_opt["state"][k]["momentum_buffer"], state["momentum_buffer"],
                                   rtol=1e-5, atol=1e-6)
    # ... and differ from two separate steps, so the comparison above can tell them apart.
    two_steps, _ = _one_step([(x[:4], y[:4]), (x[4:], y[4:])], grad_accum=1)
    assert any(not torch.allclose(two_steps[k], full[k], atol=1e-4) for k in full)


def test_one_step_is_plain_sgd_on_the_mean_loss():
    # w <- w - lr * grad of the batch-mean cross-entropy, written out with autograd outside the loop.
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 5, generator=g), torch.randint(0, 3, (6,), generator=g)
    torch.manual_seed(3)
    ref = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    grads = torch.autograd.grad(tnf.cross_entropy(ref(x), y), list(ref.parameters()))
    expected = {k: p.detach() - 0.5 * gr for (k, p), gr in zip(ref.named_parameters(), grads)}
    got, _ = _one_step([(x[:3], y[:3]), (x[3:], y[3:])], grad_accum=2, momentum=0.0)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- evaluation
def test_evaluate_returns_softmax_of_the_eval_mode_logits():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.9))  # dropout would change train-mode outputs
    x = torch.randn(5, 4)
    y = torch.tensor([0, 1, 2, 1, 0])
    out = evaluate(model, [(x[:2], y[:2]), (x[2:], y[2:])], nn.CrossEntropyLoss(), device=torch.device("cpu"))
    logits = model[0](x).detach()
    np.testing.assert_allclose(out["probs"], torch.softmax(logits, 1).numpy(), rtol=1e-6)
    assert out["preds"].tolist() == logits.argmax(1).tolist()
    assert out["labels"].tolist() == y.tolist()
    assert out["loss"] == pytest.approx(float(tnf.cross_entropy(logits, y)), rel=1e-6)  # mean over all images
    assert out["acc"] == pytest.approx(float((logits.argmax(1) == y).float().mean()))


# --------------------------------------------------------------------------- crash safety of writes
def _boom(*_args, **_kwargs):
    raise OSError(28, "No space left on device (simulated)")


@pytest.mark.parametrize("writer", ["json", "text", "csv", "torch"])
def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, writer):
    import pandas as pd

    target = tmp_path / f"result.{writer}"
    write = {
        "json": lambda value: runs.write_json_atomic(target, {"value": value}),
        "text": lambda value: runs.write_text_atomic(target, f"value {value}\n"),
        "csv": lambda value: runs.write_csv_atomic(target, pd.DataFrame({"value": [value] * 3})),
        "torch": lambda value: write_errors.save_torch_atomic(target, {"value": torch.full((256,), float(value))}),
    }[writer]
    write(1)
    before = target.read_bytes()
    # The failure comes after the new bytes were written (fsync), or while torch writes them.
    monkeypatch.setattr(atomic.os, "fsync", _boom)
    if writer == "torch":
        monkeypatch.setattr(torch, "save", lambda obj, fh, *a, **k: (fh.write(b"partial"), _boom()))
    with pytest.raises(OSError, match="simulated"):
        write(2)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_an_interrupt_inside_an_atomic_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "status.json"
    runs.write_json_atomic(target, {"status": "running"})
    before = target.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with runs.atomic_path(target) as tmp:
            tmp.write_text('{"status": "compl')
            raise KeyboardInterrupt
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]
