"""``bench-svm``: SVMs on features of frozen ImageNet CNNs (Acevedo et al. 2019).

``bench-svm experiment=acevedo2019_svm data.root=/data/PBC_dataset_normal_DIB`` takes the
same Hydra overrides as ``bench-train`` (composed with Hydra's compose API; no ``-m``:
one invocation runs every ``svm.feature_models`` x ``svm.kernels``).

The features (the network without its head, cached per model, weights and split; the
balanced extras of ``svm.balance_to``) are :mod:`bench.protocols.cnn_features`'; the SVMs
(kernels, the cross-validated choice of C, the scores) :mod:`bench.protocols.svm_fit`'s.

Run folders
    One per (feature model x kernel): ``<exp_dir>/runs/<model>+svm-<kernel>/seed<seed>/``
    with config.yaml, status.json, metrics.json (the keys of a training run's, training-only
    ones null, plus ``protocol``, ``svm`` and ``features``), predictions_val/test.csv,
    excluded.csv, cv.csv and svm.joblib (the fitted scaler + SVC). A run already completed
    with the same config is skipped; a changed config moves the old folder to
    ``runs/<model>/replaced/``. The experiment's leaderboard is refreshed after every run.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from bench import runs

from bench.runs import files as run_files
from bench.results.leaderboard import refresh_leaderboard
from bench.config.recipe import protocol_deviations, recipe_of
from bench.protocols.cnn_features import Features, compute_features
from bench.metrics.calibration import confidence_record, target_acc_of
from bench.runs.record import run_record
from bench.protocols.svm_fit import fit_svm, parse_kernel

log = logging.getLogger("bench.svm")

PROTOCOL = "svm_features"


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
        "model": result_keys({k: c["model"].get(k) for k in ("pretrained", "weights", "weights_tag", "head_keep_fc")},
                             ("model",)),
        "svm": {k: v for k, v in c["svm"].items() if k not in ("feature_models", "kernels", "n_jobs")},
    }


def _write_run(cfg, run_dir: runs.RunDir, chash: str, name: str, feature_model: str, tag: str, size: int,
               bundle, feats: dict[str, Features], fitted: dict, device, exp_dir: Path) -> dict:
    from bench.data.sources import source_metrics
    from bench.metrics import classification_metrics
    from bench.training.device import env_info, peak_memory_mb

    classes = bundle.class_names
    for split in ("val", "test"):
        run_files.write_predictions(run_dir.predictions(split), feats[split].paths, fitted["scored"][split], classes)
    runs.write_csv_atomic(run_dir.root / "cv.csv", fitted["cv_table"])
    import joblib

    with runs.atomic_path(run_dir.root / "svm.joblib") as tmp:
        joblib.dump(fitted["pipeline"], tmp)
    summary = fitted["summary"]
    test = fitted["scored"]["test"]
    metrics = run_record(
        experiment=cfg.experiment_name, model=name, seed=cfg.seed, task="classification", classes=classes,
        epochs=None, history=None, best_epoch=None,
        select_by="val_acc",  # C (and gamma) are chosen by cross-validation on train; runs rank by val_acc
        warnings=list(bundle.warnings),
        val=classification_metrics(fitted["scored"]["val"]["labels"], fitted["scored"]["val"]["preds"], classes),
        test=classification_metrics(test["labels"], test["preds"], classes),
        params_m=None, gflops=None, input_size=size, trainable_params_m=None,
        train_time_s=summary["cv_time_s"] + summary["fit_time_s"],  # SVM selection + refit; features apart
        eval_img_s=len(test["labels"]) / test["seconds"] if test["seconds"] > 0 else None,  # SVM only
        peak_mem_mb=peak_memory_mb(device),
        batch_size=None, grad_accum=None, oom_retry=None, amp=None, channels_last=None,
        precision="fp32",  # the features are computed in fp32
        weights=tag, n_excluded=bundle.n_left_out, data_root=bundle.root,
        device=str(device), env=env_info(device), config_hash=chash,
        # vs. the recipe of its experiment (Acevedo et al.), with the departures declared there
        recipe=recipe_of(cfg), protocol_deviations=protocol_deviations(cfg, model=feature_model),
        protocol=PROTOCOL,
        calibration=confidence_record({k: (fitted["scored"][k]["probs"], fitted["scored"][k]["labels"])
                                       for k in ("val", "test")}, target_acc_of(cfg)),
        stain=bundle.stain,  # data.stain: method, target fitted on training images, images kept as decoded
        by_source=None if not bundle.sources else {
            k: source_metrics(feats[k].paths, fitted["scored"][k]["labels"], fitted["scored"][k]["preds"], classes)
            for k in ("val", "test")},
        svm={"feature_model": feature_model, "weights": tag, **summary},
        features={("train_balanced" if k == "extra" else k): {"file": str(Path(f.file).relative_to(exp_dir)) if f.file else None,
                      "cached": f.cached, "seconds": round(f.seconds, 3), "n": len(f.y)}
                  for k, f in feats.items()},
    )
    run_files.write_metrics(run_dir.root, metrics)
    return metrics


def run_svm_protocol(cfg: DictConfig) -> list[dict]:
    """Every ``svm.feature_models`` x ``svm.kernels`` run of ``cfg``; never raises for one
    run's failure (its status is ``failed``). Returns one summary dict per run."""
    from bench.training.device import resolve_device

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
