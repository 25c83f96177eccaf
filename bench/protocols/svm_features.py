"""``bench-svm``: SVMs on features of frozen ImageNet CNNs (Acevedo et al. 2019).

``bench-svm experiment=acevedo2019_svm data.root=/data/PBC_dataset_normal_DIB`` takes the
same Hydra overrides as ``bench-train`` (composed with Hydra's compose API; no ``-m``:
one invocation runs every ``svm.feature_models`` x ``svm.kernels``).

Features
    The network's classification head is replaced by ``nn.Identity`` (the head table of
    :mod:`bench.models.heads`), so a feature is what the head read: VGG16's 4096-d output
    of its penultimate fully connected layer (fc7, after ReLU; dropout is off in eval
    mode; Acevedo et al. removed the fully connected layers, a departure the experiment
    declares), Inception v3's 2048-d globally pooled features, ResNet50's 2048-d pool. Images
    are resized to the model's input size (``data.image_size`` null) and normalised with
    ``data.mean``/``data.std``, no augmentation. Features are computed once per model,
    weights and split and cached as ``<exp_dir>/features/<model>-<weights tag>-<split>-<size>.npz``
    (weights tag: ``tv-IMAGENET1K_V1``, ``timm-<tag>``, ``local-<hash of the file>`` for
    ``model.weights``, ``random-seed<seed>`` with ``model.pretrained=false``, which gives
    random features and is only meant for testing the pipeline). A cache file is used only
    if its image paths, labels, normalisation (and augmentation) match the current split;
    otherwise it is recomputed. Writes are atomic (``bench.runs``).

Class balancing (``svm.balance_to=N``; the paper augmented to 4,608 per class, the experiment's value)
    Every training class with fewer than N images gets N - n_c augmented copies of its own
    images (cycled through a seeded permutation; the harness's flips and rotations,
    ``data.augment``), whose features are cached as split ``train-balanced<N>-seed<seed>``.
    Larger classes are kept whole. Validation and test are never augmented. Cross-validation
    then groups each copy with its source image (StratifiedGroupKFold), so no image is in
    a training fold and, augmented, in the fold that scores it.

Classifier
    [``StandardScaler`` (``svm.standardize``) +] ``sklearn.svm.SVC`` with the kernel
    (``rbf``, ``linear``, ``cubic`` = polynomial of degree 3, ``quadratic``, ``poly<d>``;
    polynomial kernels use ``coef0=svm.coef0``: (gamma <x, y> + coef0)^d). The schema's
    default coef0 is 1 (MATLAB's); experiment=acevedo2019_svm sets scikit-learn's defaults,
    as the paper: coef0 0, C 1 (``svm.c_grid=[1.0]``), no standardisation.
    ``C`` from ``svm.c_grid`` (and ``gamma`` from ``svm.gamma_grid`` for non-linear kernels)
    is chosen by stratified ``svm.cv_folds``-fold cross-validation on the training split
    (accuracy; ties: the first grid point), every fold's accuracy of the chosen point is
    recorded (``metrics.json`` ``svm.cv_fold_accuracy``; the whole grid in ``cv.csv``). The
    chosen SVM is refitted on the whole training split and evaluated once on validation and
    test. The leaderboard ranks by validation accuracy, as for trained models.

Scores in predictions_*.csv
    ``svm.probability=false`` (default): ``prob_<class>`` is the softmax of SVC's
    one-vs-rest decision function (votes plus a bounded confidence term): a monotone score,
    not a calibrated probability, and no extra fits. ``svm.probability=true``: Platt-scaled
    probabilities (``CalibratedClassifierCV(method="sigmoid", ensemble=False)``, what
    ``SVC(probability=True)`` did: 5 more internal fits, only for the final SVM). Either
    way ``predicted`` is the argmax of those scores (equal to ``SVC.predict`` except, with
    the softmax, where one-vs-one votes tie: the confidence term breaks the tie), and the
    metrics are computed from ``predicted``.

Run folders
    One per (feature model x kernel): ``<exp_dir>/runs/<model>+svm-<kernel>/seed<seed>/``
    with config.yaml, status.json, metrics.json (the keys of a training run's, training-only
    ones null, plus ``protocol``, ``svm`` and ``features``), predictions_val/test.csv,
    excluded.csv, cv.csv and svm.joblib (the fitted scaler + SVC). A run already completed
    with the same config is skipped; a changed config moves the old folder to
    ``runs/<model>/replaced/``. The experiment's leaderboard is refreshed after every run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from bench import runs
from bench.data.loader import balance_plan
from bench.protocol import protocol_deviations, recipe_of
from bench.leaderboard import refresh_leaderboard

log = logging.getLogger("bench.svm")

PROTOCOL = "svm_features"
FEATURES_DIR = "features"
FEATURE_FORMAT = 1  # bump when the stored features would change for the same key
SPLITS = ("train", "val", "test")
_SCALE_WORDS = ("scale", "auto")


# --------------------------------------------------------------------------- kernels
def parse_kernel(name: str) -> dict:
    """SVC keyword arguments for a kernel name: rbf, linear, sigmoid, cubic, quadratic, poly<d>."""
    key = str(name).strip().lower()
    named = {"rbf": {"kernel": "rbf"}, "linear": {"kernel": "linear"}, "sigmoid": {"kernel": "sigmoid"},
             "cubic": {"kernel": "poly", "degree": 3}, "quadratic": {"kernel": "poly", "degree": 2}}
    if key in named:
        return dict(named[key])
    m = re.fullmatch(r"poly(\d+)", key)
    if m and int(m.group(1)) >= 1:
        return {"kernel": "poly", "degree": int(m.group(1))}
    raise ValueError(f"svm.kernels: unknown kernel {name!r}; use rbf, linear, sigmoid, cubic, quadratic or poly<d>")


def _gamma(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in _SCALE_WORDS:
        return value.strip().lower()
    return float(value)


# --------------------------------------------------------------------------- feature extraction
def feature_extractor(name: str, *, pretrained: bool, weights: Optional[str] = None, seed: int = 0,
                      tag: Optional[str] = None) -> nn.Module:
    """``name`` with its classification head replaced by ``nn.Identity``, in eval mode."""
    from bench.models import create_model
    from bench.models._layers import drop_aux_head
    from bench.models.blocks import head_path

    torch.manual_seed(seed)  # the whole network when not pretrained
    model = create_model(name, num_classes=1, pretrained=pretrained, weights=weights, weights_tag=tag)
    model.set_submodule(head_path(model, name), nn.Identity())
    drop_aux_head(model)
    return model.eval()


def weights_tag(name: str, *, pretrained: bool, weights: Optional[str], seed: int, tag: Optional[str] = None) -> str:
    """Which weights produced the features (part of the cache file name)."""
    if weights:
        path = Path(weights).expanduser().resolve()
        st = path.stat()
        digest = hashlib.sha1(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:10]
        return f"local-{digest}"
    if not pretrained:
        return f"random-seed{seed}"
    from bench.models import get_model_spec

    spec = get_model_spec(name)
    from bench.models.weights import resolved_weights_tag

    if spec.source == "torchvision":
        return f"tv-{resolved_weights_tag(name, tag)}"
    if spec.source == "timm":
        return f"timm-{resolved_weights_tag(name, tag) or 'default'}"
    return "pretrained"


@torch.no_grad()
def extract_features(model: nn.Module, images: torch.Tensor, *, normalize, device: torch.device,
                     batch_size: int, index: Optional[torch.Tensor] = None,
                     augment: Optional[dict] = None) -> np.ndarray:
    """Features (N, D) float32 of uint8 images (N, 3, S, S), or of ``images[index]``;
    ``augment``: per-image flips and angles (``BatchAugment.sample``) applied before
    normalisation."""
    from bench.data.transforms import apply_augment
    from bench.engine import split_outputs

    model.to(device).eval()
    n = len(images) if index is None else len(index)
    out = []
    for start in range(0, n, batch_size):
        rows = slice(start, start + batch_size)
        x = (images[rows] if index is None else images[index[rows]]).to(device).float()
        if augment is not None:
            x = apply_augment(x, **{k: v[rows].to(device) for k, v in augment.items()})
        feats, _ = split_outputs(model(normalize(x)))
        out.append(feats.flatten(1).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


@dataclass
class Features:
    X: np.ndarray  # (N, D) float32
    y: np.ndarray  # (N,) int64
    paths: list[str]
    source: Optional[np.ndarray] = None  # balanced extras: index of the source image in train
    file: str = ""
    cached: bool = False
    seconds: float = 0.0


def feature_path(exp_dir: Path, model: str, tag: str, split: str, size: int) -> Path:
    return Path(exp_dir) / FEATURES_DIR / f"{runs.model_dirname(model)}-{tag}-{split}-{size}.npz"


def _fingerprint(paths) -> str:
    return hashlib.sha1("\n".join(paths).encode()).hexdigest()


def _load_cached(path: Path, meta: dict, paths: list[str], labels: np.ndarray) -> Optional[Features]:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            stored = json.loads(str(z["meta"]))
            ok = (stored == meta and list(z["paths"]) == list(paths)
                  and np.array_equal(z["labels"], labels))
            if ok:
                source = z["source"] if "source" in z.files else None
                return Features(z["X"], z["labels"], list(paths), source)
    except Exception as exc:  # truncated or foreign file: recompute
        log.warning("unreadable feature cache %s (%s); recomputing", path, exc)
        return None
    log.warning("feature cache %s was computed for other images or settings; recomputing", path)
    return None


def _save(path: Path, meta: dict, feats: Features) -> None:
    arrays = {"X": feats.X.astype(np.float32), "labels": feats.y.astype(np.int64),
              "paths": np.asarray(feats.paths, dtype=str), "meta": np.asarray(json.dumps(meta, sort_keys=True))}
    if feats.source is not None:
        arrays["source"] = feats.source.astype(np.int64)
    with runs.atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def compute_features(cfg: DictConfig, exp_dir: Path, name: str, size: int, bundle, device: torch.device
                     ) -> tuple[dict[str, Features], str]:
    """Features of train/val/test (and the balanced extras) of ``name``, from the cache
    where possible; the extractor is built only if something must be computed."""
    from bench.data.transforms import BatchAugment, Normalize

    seed = int(cfg.seed)
    tag = weights_tag(name, pretrained=bool(cfg.model.pretrained), weights=cfg.model.weights, seed=seed,
                      tag=cfg.model.get("weights_tag"))
    base_meta = {"format": FEATURE_FORMAT, "model": name, "weights": tag, "size": int(size),
                 "mean": [float(v) for v in cfg.data.mean], "std": [float(v) for v in cfg.data.std]}
    norm = Normalize(cfg.data.mean, cfg.data.std, device=device)
    batch = int(cfg.trainer.eval_batch_size)
    extractor: list[nn.Module] = []

    def get_extractor() -> nn.Module:
        if not extractor:
            log.info("building feature extractor %s (%s)", name, tag)
            extractor.append(feature_extractor(name, pretrained=bool(cfg.model.pretrained),
                                               weights=cfg.model.weights, seed=seed,
                                               tag=cfg.model.get("weights_tag")))
        return extractor[0]

    def one(split_name: str, meta: dict, images, labels: np.ndarray, paths: list[str],
            source: Optional[np.ndarray] = None, augment: Optional[dict] = None) -> Features:
        path = feature_path(exp_dir, name, tag, split_name, size)
        cached = _load_cached(path, meta, paths, labels)
        if cached is not None:
            cached.file, cached.cached = str(path), True
            log.info("%s %s: %d cached features (%s)", name, split_name, len(paths), path.name)
            return cached
        start = time.perf_counter()
        index = None if source is None else torch.as_tensor(source, dtype=torch.long)
        X = extract_features(get_extractor(), images, normalize=norm, device=device, batch_size=batch,
                             index=index, augment=augment)
        feats = Features(X, labels, paths, source, str(path), False, time.perf_counter() - start)
        _save(path, meta, feats)
        log.info("%s %s: %d features of %d dims in %.1fs -> %s", name, split_name, len(paths),
                 X.shape[1] if X.ndim == 2 else 0, feats.seconds, path)
        return feats

    out = {}
    for split in SPLITS:
        data = bundle.splits[split]
        out[split] = one(split, {**base_meta, "split": split}, data.images, data.labels.cpu().numpy(),
                         list(data.paths))
    n = cfg.svm.balance_to
    if n:
        train = bundle.splits["train"]
        labels = train.labels.cpu().numpy()
        src = balance_plan(labels, bundle.num_classes, int(n), np.random.default_rng(seed).permutation)
        aug = cfg.data.augment
        augmenter = BatchAugment(bool(aug.hflip), bool(aug.vflip), float(aug.rotation), str(aug.interpolation))
        params = augmenter.sample(len(src), torch.Generator().manual_seed(seed))
        split_name = f"train-balanced{int(n)}-seed{seed}"
        meta = {**base_meta, "split": split_name, "train": _fingerprint(train.paths),
                "augment": {"hflip": augmenter.hflip, "vflip": augmenter.vflip, "rotation": augmenter.rotation}}
        out["extra"] = one(split_name, meta, train.images, labels[src], [train.paths[i] for i in src],
                           source=src, augment=params)
    return out, tag


# --------------------------------------------------------------------------- the SVM
def _pipeline(kernel: dict, scfg, seed: int, *, params: Optional[dict] = None, probability: bool = False):
    """[StandardScaler ->] SVC; with ``probability`` the SVC is Platt-scaled by
    ``CalibratedClassifierCV(method="sigmoid", ensemble=False)`` (what SVC(probability=True)
    did, and what scikit-learn >= 1.9 asks for instead of it)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    extra = {"coef0": float(scfg.coef0)} if kernel["kernel"] in ("poly", "sigmoid") else {}
    svc = SVC(**kernel, **extra, **(params or {}), decision_function_shape="ovr", random_state=seed,
              cache_size=1000)
    if probability:
        svc = CalibratedClassifierCV(svc, method="sigmoid", cv=5, ensemble=False)
    steps = ([("scale", StandardScaler())] if scfg.standardize else []) + [("svc", svc)]
    return Pipeline(steps)


def _n_support(pipe) -> int:
    svc = pipe.named_steps["svc"]
    if hasattr(svc, "calibrated_classifiers_"):
        svc = svc.calibrated_classifiers_[0].estimator
    return int(np.sum(svc.n_support_))


def class_scores(pipe, X: np.ndarray, num_classes: int, probability: bool) -> np.ndarray:
    """(N, num_classes) scores: Platt probabilities or the softmax of the decision function."""
    classes = np.asarray(pipe.classes_, dtype=int)
    if probability:
        part = pipe.predict_proba(X)
    else:
        d = np.asarray(pipe.decision_function(X), dtype=np.float64)
        if d.ndim == 1:  # two classes: one signed distance, positive = classes[1]
            d = np.stack([-d, d], axis=1)
        d = d - d.max(axis=1, keepdims=True)
        part = np.exp(d)
        part /= part.sum(axis=1, keepdims=True)
    full = np.zeros((len(X), num_classes))
    full[:, classes] = part
    return full


def fit_svm(cfg: DictConfig, kernel_name: str, feats: dict[str, Features], class_names: list[str]) -> dict:
    """Cross-validate on train, refit, score val and test. Returns results for the run folder."""
    scfg, seed = cfg.svm, int(cfg.seed)
    kernel = parse_kernel(kernel_name)
    X, y, groups = _fit_set(feats)
    folds = int(scfg.cv_folds)
    _check_folds(folds, y[: len(feats["train"].y)], class_names)
    balanced = "extra" in feats
    search, cv_time = _grid_search(kernel, scfg, seed, X, y, groups if balanced else None, folds, balanced)
    res, best = search.cv_results_, int(search.best_index_)
    chosen = {k.removeprefix("svc__"): v for k, v in res["params"][best].items()}
    fold_acc = [float(res[f"split{k}_test_score"][best]) for k in range(folds)]

    final = _pipeline(kernel, scfg, seed, params=chosen, probability=bool(scfg.probability))
    start = time.perf_counter()
    final.fit(X, y)
    fit_time = time.perf_counter() - start
    scored = {split: _score(final, feats[split], len(class_names), bool(scfg.probability)) for split in ("val", "test")}
    return {
        "pipeline": final, "scored": scored, "cv_table": _cv_table(res, best, folds),
        "summary": {
            "kernel": kernel_name, "sklearn_kernel": kernel, "coef0": float(scfg.coef0)
            if kernel["kernel"] in ("poly", "sigmoid") else None,
            "selected": chosen, "cv_folds": folds, "cv_grouped_by_source": balanced,
            "cv_fold_accuracy": fold_acc, "cv_mean_accuracy": float(np.mean(fold_acc)),
            "cv_std_accuracy": float(np.std(fold_acc, ddof=1)) if folds > 1 else None,
            "cv_time_s": cv_time, "fit_time_s": fit_time,
            "n_support": _n_support(final), "feature_dim": int(X.shape[1]),
            "n_fit": int(len(y)),
            "n_fit_per_class": {c: int(n) for c, n in zip(class_names, np.bincount(y, minlength=len(class_names)))},
            "balance_to": int(scfg.balance_to) if scfg.balance_to else None,
            "standardize": bool(scfg.standardize),
            "scores": "platt_probability" if scfg.probability else "softmax_of_ovr_decision_function",
        },
    }


def _fit_set(feats: dict[str, Features]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training features plus the augmented extra ones (svm.balance_to); groups = the source image,
    so an original and its augmented copies never sit on both sides of a CV fold."""
    X, y = feats["train"].X, feats["train"].y
    groups = np.arange(len(y))
    if "extra" in feats and len(feats["extra"].y):
        X = np.concatenate([X, feats["extra"].X])
        y = np.concatenate([y, feats["extra"].y])
        groups = np.concatenate([groups, feats["extra"].source])
    return X, y, groups


def _check_folds(folds: int, y_train: np.ndarray, class_names: list[str]) -> None:
    counts = np.bincount(y_train, minlength=len(class_names))
    present = counts[counts > 0]
    if folds < 2 or present.min() < folds:
        worst = class_names[int(np.flatnonzero(counts == present.min())[0])]
        raise ValueError(f"svm.cv_folds={folds} needs >= 2 folds and at least that many training images per "
                         f"class; class {worst!r} has {present.min()}. Lower svm.cv_folds.")


def _grid_search(kernel: dict, scfg, seed: int, X, y, groups, folds: int, balanced: bool):
    """GridSearchCV over C (and gamma), accuracy, stratified folds (grouped by source when balanced)."""
    from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold, StratifiedKFold

    cv = (StratifiedGroupKFold if balanced else StratifiedKFold)(n_splits=folds, shuffle=True, random_state=seed)
    grid: dict[str, list] = {"svc__C": [float(c) for c in scfg.c_grid]}
    if kernel["kernel"] != "linear":
        grid["svc__gamma"] = [_gamma(g) for g in scfg.gamma_grid]
    search = GridSearchCV(_pipeline(kernel, scfg, seed), grid, scoring="accuracy", cv=cv,
                          n_jobs=int(scfg.n_jobs), refit=False, error_score="raise")
    start = time.perf_counter()
    search.fit(X, y, groups=groups)
    return search, time.perf_counter() - start


def _score(pipe, f: Features, num_classes: int, probability: bool) -> dict:
    start = time.perf_counter()
    probs = class_scores(pipe, f.X, num_classes, probability) if len(f.y) else np.zeros((0, num_classes))
    return {"labels": f.y, "preds": probs.argmax(1) if len(probs) else np.zeros(0, int), "probs": probs,
            "seconds": time.perf_counter() - start}


def _cv_table(res: dict, best: int, folds: int) -> pd.DataFrame:
    """cv.csv: every grid point's mean, std and per-fold accuracy, its rank, and the one selected."""
    rows = []
    for i, params in enumerate(res["params"]):
        row = {k.removeprefix("svc__"): v for k, v in params.items()}
        row.update({"mean_accuracy": res["mean_test_score"][i], "std_accuracy": res["std_test_score"][i]})
        row.update({f"fold{k + 1}": res[f"split{k}_test_score"][i] for k in range(folds)})
        row.update({"rank": int(res["rank_test_score"][i]), "selected": i == best})
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- run folders
def run_name(feature_model: str, kernel: str) -> str:
    return f"{feature_model}+svm-{kernel}"


def identity(cfg: DictConfig, feature_model: str, kernel: str) -> dict:
    """What decides an SVM run's results (hashed to its config_hash): the data keys by the same
    rule as a training run's (bench.config.result_keys), the extractor's weights and the SVM's own
    options (which runs there are, feature_models and kernels, and n_jobs do not change one)."""
    from bench.config import result_keys

    c = OmegaConf.to_container(cfg, resolve=True)
    return {
        "protocol": PROTOCOL, "feature_model": feature_model, "kernel": kernel, "seed": int(cfg.seed),
        "data": result_keys(c["data"], ("data",)),
        "model": result_keys({k: c["model"].get(k) for k in ("pretrained", "weights", "weights_tag")}, ("model",)),
        "svm": {k: v for k, v in c["svm"].items() if k not in ("feature_models", "kernels", "n_jobs")},
    }


def _write_run(cfg, run_dir: runs.RunDir, chash: str, name: str, feature_model: str, tag: str, size: int,
               bundle, feats: dict[str, Features], fitted: dict, device, exp_dir: Path) -> dict:
    from bench.metrics import classification_metrics
    from bench.device import env_info, peak_memory_mb

    classes = bundle.class_names
    for split in ("val", "test"):
        runs.write_predictions(run_dir.predictions(split), feats[split].paths, fitted["scored"][split], classes)
    runs.write_csv_atomic(run_dir.root / "cv.csv", fitted["cv_table"])
    import joblib

    with runs.atomic_path(run_dir.root / "svm.joblib") as tmp:
        joblib.dump(fitted["pipeline"], tmp)
    summary = fitted["summary"]
    test = fitted["scored"]["test"]
    metrics = {
        "experiment": cfg.experiment_name, "model": name, "seed": int(cfg.seed),
        "status": runs.STATUS_COMPLETED, "classes": list(classes),
        "epochs": None, "epochs_run": None, "best_epoch": None,
        "val": classification_metrics(fitted["scored"]["val"]["labels"], fitted["scored"]["val"]["preds"], classes),
        "test": classification_metrics(test["labels"], test["preds"], classes),
        "params_m": None, "gflops": None, "input_size": int(size), "trainable_params_m": None,
        "train_time_s": summary["cv_time_s"] + summary["fit_time_s"],  # SVM selection + refit; features apart
        "train_img_s": None,
        "eval_img_s": len(test["labels"]) / test["seconds"] if test["seconds"] > 0 else None,  # SVM only
        "peak_mem_mb": peak_memory_mb(device),
        "batch_size": None, "grad_accum": None, "oom_retry": None, "amp": None, "channels_last": None,
        "n_excluded": bundle.n_left_out, "data_root": bundle.root,
        "device": str(device), "env": env_info(device), "config_hash": chash,
        "protocol": PROTOCOL,
        # vs. the recipe of its experiment (Acevedo et al.), with the departures declared there
        "protocol_deviations": protocol_deviations(cfg), "recipe": recipe_of(cfg),
        "svm": {"feature_model": feature_model, "weights": tag, **summary},
        "features": {("train_balanced" if k == "extra" else k): {"file": str(Path(f.file).relative_to(exp_dir)) if f.file else None,
                         "cached": f.cached, "seconds": round(f.seconds, 3), "n": len(f.y)}
                     for k, f in feats.items()},
    }
    runs.write_metrics(run_dir.root, metrics)
    return metrics


def run_svm_protocol(cfg: DictConfig) -> list[dict]:
    """Every ``svm.feature_models`` x ``svm.kernels`` run of ``cfg``; never raises for one
    run's failure (its status is ``failed``). Returns one summary dict per run."""
    from bench.device import resolve_device

    exp_dir = runs.experiment_dir(cfg.paths.results_dir, cfg.experiment_name)
    kernels = list(cfg.svm.kernels)
    for k in kernels:
        parse_kernel(k)  # fail on a typo before any feature is computed
    if not cfg.model.pretrained and not cfg.model.weights:
        log.warning("model.pretrained=false: the feature extractors are randomly initialised (seed %d); random "
                    "features are only meant for testing the pipeline, not for results", int(cfg.seed))
    if cfg.trainer.num_threads:
        torch.set_num_threads(int(cfg.trainer.num_threads))
    device = resolve_device(cfg.trainer.device)
    results: list[dict] = []
    for feature_model in cfg.svm.feature_models:
        # Every kernel's run is started first: they share the features computed next.
        todo = _begin_kernels(cfg, exp_dir, feature_model, kernels, results)
        if todo:
            results += _run_feature_model(cfg, exp_dir, feature_model, todo, device)
    refresh_leaderboard(exp_dir)
    return results


def _begin_kernels(cfg, exp_dir: Path, feature_model: str, kernels: list[str], results: list[dict]) -> list[tuple]:
    """Start the lifecycle of each kernel's run; finished or busy ones go straight to ``results``,
    the others are returned as (kernel, name, run folder, config hash, lifecycle)."""
    seed = int(cfg.seed)
    config_yaml = OmegaConf.to_yaml(OmegaConf.to_container(cfg, resolve=True))
    todo = []
    for kernel in kernels:
        name = run_name(feature_model, kernel)
        run_dir = runs.RunDir.for_run(exp_dir, name, seed)
        chash = runs.config_hash(identity(cfg, feature_model, kernel))
        life = runs.RunLifecycle(run_dir, chash, config_yaml, model=name, seed=seed,
                                 experiment=cfg.experiment_name, after=lambda: refresh_leaderboard(exp_dir))
        early = life.begin()
        if early is not None:
            results.append(early)
        else:
            todo.append((kernel, name, run_dir, chash, life))
    return todo


def _run_feature_model(cfg, exp_dir: Path, feature_model: str, todo: list[tuple], device) -> list[dict]:
    """The features of one extractor, then each kernel's SVM on them; a failure is that run's row."""
    from bench.data.build import build_data
    from bench.models import get_model_spec

    try:
        spec = get_model_spec(feature_model)
        size = spec.image_size(cfg.data.image_size)
        if size < spec.min_input_size:
            raise ValueError(f"data.image_size={size} is below {feature_model}'s minimum input of "
                             f"{spec.min_input_size} px; leave it null for {spec.input_size} px")
        bundle = build_data(cfg.data, image_size=size, exp_dir=exp_dir, cache_dir=cfg.paths.cache_dir)
        log.info("data: %s", bundle.summary())
        feats, tag = compute_features(cfg, exp_dir, feature_model, size, bundle, device)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # no features: every kernel of this model fails, the others go on
        tb = traceback.format_exc()
        return [life.fail(exc, tb) for *_, life in todo]
    results = []
    for kernel, name, run_dir, chash, life in todo:
        try:
            runs.write_csv_atomic(run_dir.excluded, bundle.excluded)
            fitted = fit_svm(cfg, kernel, feats, bundle.class_names)
            metrics = _write_run(cfg, run_dir, chash, name, feature_model, tag, size, bundle, feats, fitted,
                                 device, exp_dir)
        except KeyboardInterrupt:
            for *_, other in todo:
                other.close()
            raise
        except Exception as exc:
            results.append(life.fail(exc, traceback.format_exc()))
        else:
            s = metrics["svm"]
            log.info("%s: CV accuracy %s (mean %.4f), %s; val acc %.4f, test acc %.4f -> %s", name,
                     " ".join(f"{a:.4f}" for a in s["cv_fold_accuracy"]), s["cv_mean_accuracy"], s["selected"],
                     metrics["val"]["accuracy"], metrics["test"]["accuracy"], run_dir.root)
            results.append(life.complete(metrics, cv_fold_accuracy=s["cv_fold_accuracy"]))
    return results


# --------------------------------------------------------------------------- console script


def main(argv: Optional[list[str]] = None) -> int:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from bench.config import compose_config
    from bench.leaderboard import build_leaderboard, format_leaderboard, ranking_text
    from bench.models import UnknownModelError, get_model_spec

    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        from bench.commands import print_help

        print_help("bench-svm")
        return 0
    if any(a in ("-m", "--multirun") for a in args):
        print("bench-svm: no -m: one invocation runs every svm.feature_models x svm.kernels; list them with "
              "svm.feature_models=[vgg16,inception_v3] svm.kernels=[rbf,cubic].", file=sys.stderr)
        return 2
    try:
        cfg = compose_config(args)
        for name in cfg.svm.feature_models:
            get_model_spec(name)
        for kernel in cfg.svm.kernels:
            parse_kernel(kernel)
    except (HydraException, OmegaConfBaseException, UnknownModelError, ValueError) as exc:
        print(f"bench-svm: {exc}", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    results = run_svm_protocol(cfg)
    exp_dir = runs.experiment_dir(cfg.paths.results_dir, cfg.experiment_name)
    if (exp_dir / "runs").is_dir():
        board = build_leaderboard(exp_dir)
        print(f"\nLeaderboard of {exp_dir} ({ranking_text(board)}):")
        print(format_leaderboard(board))
    failed = [r for r in results if r["status"] == runs.STATUS_FAILED]
    for r in failed:
        print(f"  {r['model']} seed {r['seed']}: {r['error']} ({r['run_dir']})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
