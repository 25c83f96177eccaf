"""How far a model's confidence can be trusted, from its saved probabilities.

- Calibration (:func:`calibration_metrics`): ``ece`` and ``mce``, the expected and the maximum gap
  between confidence and accuracy over 15 equal-width bins of the top-label confidence
  (torchmetrics' ``multiclass_calibration_error``, norms l1 and max); ``brier`` (multi-class: the
  squared distance to the one-hot truth summed over classes, averaged over images) and ``nll`` (log
  loss), scikit-learn's; ``aurc``, the area under the risk-coverage curve: the images ranked by
  confidence, the error rate of the k most confident averaged over every k (lower: confidence
  ranks the mistakes last).
- Temperature scaling (:func:`fit_temperature`): one scalar T, fitted on validation only by
  minimising the NLL of softmax(log p / T); T > 1 softens an over-confident model. It never
  changes which class wins, only how sure the model says it is.
- Referral (:func:`referral_threshold`): for a target accuracy, the lowest confidence at which the
  validation images at or above it reach that accuracy (the most cells kept); images below it go to
  a person. :func:`referral_outcome` applies a threshold to other images (test, another lab's).
"""

from __future__ import annotations

import math

import numpy as np

N_BINS = 15
EPS = 1e-12  # probabilities are saved rounded: a 0 becomes this before a log


def _checked(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=int)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"probabilities of shape {probs.shape} do not match {len(labels)} labels")
    return probs, labels


def _renormalised(probs: np.ndarray) -> np.ndarray:
    """Rows summing to 1 (the saved ones are rounded to 6 decimals)."""
    probs = np.clip(probs, 0.0, None)
    return probs / np.clip(probs.sum(axis=1, keepdims=True), EPS, None)


def calibration_metrics(probs, labels) -> dict:
    """``{"ece", "mce", "brier", "nll", "aurc", "n"}`` of (N, C) probabilities against labels 0..C-1;
    empty sets give NaN."""
    import torch
    from sklearn.metrics import brier_score_loss, log_loss
    from torchmetrics.functional.classification import multiclass_calibration_error

    probs, labels = _checked(probs, labels)
    if not len(labels):
        return {k: math.nan for k in ("ece", "mce", "brier", "nll", "aurc")} | {"n": 0}
    probs = _renormalised(probs)
    n_classes = probs.shape[1]
    p, y = torch.as_tensor(probs), torch.as_tensor(labels)
    ece, mce = (float(multiclass_calibration_error(p, y, num_classes=n_classes, n_bins=N_BINS, norm=norm))
                for norm in ("l1", "max"))
    classes = list(range(n_classes))
    # scale_by_half=False: the multi-class Brier score for two classes too (scikit-learn halves it there)
    brier = float(brier_score_loss(labels, probs, labels=classes, scale_by_half=False))
    return {"ece": ece, "mce": mce, "brier": brier,
            "nll": float(log_loss(labels, np.clip(probs, EPS, 1.0), labels=classes)),
            "aurc": aurc(probs, labels), "n": int(len(labels))}


def aurc(probs, labels) -> float:
    """Area under the risk-coverage curve: images by decreasing confidence (ties in their order),
    the error rate of the first k, averaged over k = 1..N."""
    probs, labels = _checked(probs, labels)
    if not len(labels):
        return math.nan
    confidence = probs.max(axis=1)
    wrong = (probs.argmax(axis=1) != labels)[np.argsort(-confidence, kind="stable")]
    return float(np.mean(np.cumsum(wrong) / np.arange(1, len(wrong) + 1)))


# --------------------------------------------------------------------------- temperature
def apply_temperature(probs, temperature: float) -> np.ndarray:
    """softmax(log p / T): the same ranking of classes, confidence softened (T > 1) or sharpened."""
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), EPS, None)) / float(temperature)
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=1, keepdims=True)


def fit_temperature(val_probs, val_labels) -> float:
    """The T in [0.05, 20] that minimises the validation NLL of :func:`apply_temperature`
    (scipy's bounded scalar minimiser on log T); 1.0 without validation images."""
    from scipy.optimize import minimize_scalar

    probs, labels = _checked(val_probs, val_labels)
    if not len(labels):
        return 1.0
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        return float(-np.mean(np.log(np.clip(apply_temperature(probs, math.exp(log_t))[rows, labels], EPS, None))))

    result = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded",
                             options={"xatol": 1e-6})
    return float(math.exp(result.x))


# --------------------------------------------------------------------------- referral
def referral_threshold(confidence, correct, target_acc: float) -> dict:
    """On validation: the lowest confidence threshold t such that the images with confidence >= t
    are right at least ``target_acc`` of the time (the most images kept). ``threshold`` None when
    no threshold reaches the target (every image would go to a person)."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=bool)
    out = {"target_acc": float(target_acc), "threshold": None, "val_kept_share": 0.0, "val_acc_kept": math.nan,
           "rule": f"lowest validation confidence at which the kept images reach {target_acc:.1%} accuracy"}
    if not len(confidence):
        return out
    order = np.argsort(-confidence, kind="stable")
    conf, right = confidence[order], correct[order]
    kept_acc = np.cumsum(right) / np.arange(1, len(right) + 1)
    # A threshold keeps every image at or above it: only the last of a run of equal confidences is a cut.
    cuts = np.flatnonzero(np.r_[conf[1:] != conf[:-1], True])
    ok = cuts[kept_acc[cuts] >= target_acc]
    if len(ok):
        k = int(ok[-1])
        out.update(threshold=float(conf[k]), val_kept_share=(k + 1) / len(conf), val_acc_kept=float(kept_acc[k]))
    return out


def referral_outcome(confidence, correct, threshold: float | None) -> dict:
    """Images below ``threshold`` go to a person: their share, and the accuracy on the rest (NaN
    when none is kept; a None threshold refers every image)."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=bool)
    kept = np.zeros(len(confidence), bool) if threshold is None else confidence >= threshold
    n = len(confidence)
    return {"referred_share": float(1 - kept.mean()) if n else math.nan,
            "acc_kept": float(correct[kept].mean()) if kept.any() else math.nan, "n": int(n)}


# --------------------------------------------------------------------------- a run's record
DEFAULT_TARGET_ACC = 0.99  # referral.target_acc: what a lab asks of the cells it does not look at again


def target_acc_of(cfg) -> float:
    """``referral.target_acc`` of a config (the default for configs written before it existed)."""
    referral = cfg.get("referral") if hasattr(cfg, "get") else None
    return float(referral.target_acc) if referral is not None else DEFAULT_TARGET_ACC


def confidence_record(splits: dict, target_acc: float = DEFAULT_TARGET_ACC) -> dict:
    """metrics.json's ``calibration`` entry from ``{split: (probs, labels)}`` with a ``val`` split:
    the temperature and the referral threshold, both chosen on validation only, and per split the
    raw and the temperature-scaled calibration numbers and the referral's outcome."""
    val_probs, val_labels = splits["val"]
    temperature = fit_temperature(val_probs, val_labels)
    referral = referral_threshold(*_confidence_and_correct(val_probs, val_labels), target_acc)
    out = {"temperature": temperature, "n_bins": N_BINS, "fitted_on": "val", "referral": referral}
    for split, (probs, labels) in splits.items():
        out[split] = split_confidence(probs, labels, temperature, referral["threshold"])
    return out


def split_confidence(probs, labels, temperature: float, threshold: float | None) -> dict:
    """One split's (or external set's) calibration, raw and at ``temperature``, and the referral at
    ``threshold`` (both chosen on the run's validation images)."""
    probs, labels = _checked(probs, labels)
    return {**calibration_metrics(probs, labels),
            "calibrated": calibration_metrics(apply_temperature(probs, temperature), labels),
            "referral": referral_outcome(*_confidence_and_correct(probs, labels), threshold)}


def _confidence_and_correct(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    probs, labels = _checked(probs, labels)
    return probs.max(axis=1), probs.argmax(axis=1) == labels
