"""The two-level classifier (Cheuque et al. 2022, Diagnostics 12:248), on any imagefolder dataset.

Level 1 tells groups of classes apart (``two_level.groups``; default mononuclear =
lymphocyte, monocyte and polymorphonuclear = neutrophil, eosinophil); level 2 has one
classifier per group for its classes. Each level is an ordinary run of
:func:`bench.training.run_training` on the same split: the split is made over all classes first,
then ``data.classes`` keeps the grouped classes and ``data.class_map`` renames them to
their group (level 1) or keeps one group's classes (level 2). Images of classes outside
every group are excluded and counted (``n_excluded``, ``excluded_by_class``).

The composed classifier is then evaluated end to end on the held-out images of the
grouped classes: level 1 picks the group, that group's level-2 classifier picks the
class (a group of one class needs no level-2 model). Its metrics are the harness's one
metric set (:func:`bench.metrics.classification_metrics`) over the original classes, and
it gets a run folder of the usual format, so it is a row of the leaderboard::

    <results_dir>/<experiment>/                       (with bench-cv: <experiment>/mc30/rep03/)
        runs/two_level--<model>/seed<seed>/           the composed classifier
            config.yaml, status.json, metrics.json, predictions_val.csv, predictions_test.csv, excluded.csv
        leaderboard.csv, per_class.csv, summary.csv
        levels/level1/                                an experiment folder: manifest, runs/<model>/seed<seed>/
        levels/level2-<group>/                        one per group with two or more classes

In the predictions, ``predicted`` is the cascade's decision and ``prob_<class>`` the
composed probability P(group) x P(class | group) (every level-2 model is run on every
image for it); the two can disagree when level 1 is unsure. ``group_label`` and
``group_predicted`` give level 1's view. The composed model is re-evaluated on every
invocation (cheap); the level runs are reused when their config is unchanged.

The paper's first stage, detecting cells in whole smear images with Faster R-CNN, is not
part of this: the input is already one image per cell.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from bench import runs

from bench.runs import files as run_files
from bench.config.recipe import protocol_deviations, recipe_of
from bench.config.plans import level_configs, validate_groups
from bench.metrics import classification_metrics
from bench.runs.record import run_record

log = logging.getLogger("bench.two_level")

COMPOSED_PREFIX = "two_level/"  # the composed model's name: two_level/<model> (folder two_level--<model>)


# --------------------------------------------------------------------------- the protocol
def run_two_level(cfg: DictConfig) -> dict:
    """Train level 1 and the level-2 classifiers, then evaluate the composed classifier and
    write its run folder. Never raises for a failed level: the composed run is then ``failed``."""
    from bench.results.leaderboard import refresh_leaderboard
    from bench.config import run_identity
    from bench.training import run_training as train

    exp_dir = runs.experiment_dir(cfg.paths.results_dir, cfg.experiment_name)
    name = COMPOSED_PREFIX + cfg.model.name
    seed = int(cfg.seed)
    run_dir = runs.RunDir.for_run(exp_dir, name, seed)
    container, chash = run_identity(cfg)

    def work() -> dict:
        level1_cfg, level2_cfgs = level_configs(cfg)
        level_results = {"level1": train(level1_cfg)}
        for g, level_cfg in level2_cfgs.items():
            level_results[f"level2-{g}"] = train(level_cfg)
        failed = {k: r for k, r in level_results.items() if r["status"] == runs.STATUS_FAILED}
        if failed:
            raise RuntimeError("; ".join(f"{k} failed: {r.get('error')}" for k, r in failed.items()))
        return compose_and_evaluate(cfg, level1_cfg, level2_cfgs, run_dir, chash)

    result = runs.RunLifecycle(run_dir, chash, OmegaConf.to_yaml(container), model=name, seed=seed,
                               experiment=cfg.experiment_name, after=lambda: refresh_leaderboard(exp_dir)).run(work)
    if result["status"] in (runs.STATUS_COMPLETED, "skipped") and run_dir.metrics.exists():
        result["n_excluded"] = run_files.read_metrics(run_dir.root).get("n_excluded")
    return result


def _load_level(cfg: DictConfig) -> tuple[torch.nn.Module, list[str], dict]:
    """The best checkpoint of a level's run as an eval-mode model, its class names and metrics."""
    from bench.training.checkpoints import rebuild_model

    exp_dir = runs.experiment_dir(cfg.paths.results_dir, cfg.experiment_name)
    rd = runs.RunDir.for_run(exp_dir, cfg.model.name, int(cfg.seed))
    ckpt = torch.load(rd.best_ckpt, map_location="cpu", weights_only=True)
    metrics = run_files.read_metrics(rd.root)
    metrics["run_dir"] = str(rd.root)
    return rebuild_model(ckpt), list(ckpt["class_names"]), metrics


@torch.no_grad()
def _predict(model, split, cfg: DictConfig, device, amp: bool) -> tuple[np.ndarray, float]:
    """Softmax probabilities (N, C) for a split (first ``trainer.max_batches`` batches if set)."""
    from bench.data.loader import BatchLoader
    from bench.data.transforms import Normalize
    from bench.training.engine import autocast, split_outputs

    loader = BatchLoader(split, cfg.trainer.eval_batch_size, normalize=Normalize(cfg.data.mean, cfg.data.std,
                         device=device), device=device, max_batches=cfg.trainer.max_batches)
    start, out = time.perf_counter(), []
    for x, _ in loader:
        with autocast(device, amp):
            logits, _aux = split_outputs(model(x))
        out.append(torch.softmax(logits.float(), dim=1).cpu())
    probs = torch.cat(out).numpy().astype(np.float64) if out else np.zeros((0, 0))
    return probs, time.perf_counter() - start


def compose_and_evaluate(cfg, level1_cfg, level2_cfgs, run_dir: runs.RunDir, chash: str) -> dict:
    """Evaluate the cascade on val and test of the grouped classes; write metrics and predictions."""
    from bench.data.build import build_data
    from bench.training.device import resolve_device
    from bench.models import get_model_spec
    from bench.training.precision import resolve_precision

    groups = validate_groups(cfg.two_level.groups)
    device = resolve_device(cfg.trainer.device)
    amp = bool(resolve_precision(cfg.trainer, device)[0])  # the training rule; no timed trial to evaluate
    image_size = get_model_spec(cfg.model.name).image_size(cfg.data.image_size)

    # The grouped classes under their own names, on the level-1 split (same manifest file).
    eval_cfg = copy.deepcopy(level1_cfg)
    OmegaConf.update(eval_cfg, "data.class_map", None, merge=False)
    level1_dir = runs.experiment_dir(cfg.paths.results_dir, level1_cfg.experiment_name)
    bundle = build_data(eval_cfg.data, image_size=image_size, exp_dir=level1_dir, cache_dir=cfg.paths.cache_dir)
    level1 = _load_level(level1_cfg)
    level2 = {g: _load_level(c) for g, c in level2_cfgs.items()}
    for m, _, _ in (level1, *level2.values()):
        m.to(device)
    metrics_of = {split: _evaluate_split(bundle, split, groups, level1, level2, cfg, device, amp, run_dir)
                  for split in ("val", "test")}
    runs.write_csv_atomic(run_dir.excluded, bundle.excluded)
    metrics = _composed_metrics(cfg, chash, bundle, groups, level1, level2, metrics_of, image_size, device,
                                _excluded_by_class(eval_cfg.data, level1_dir, groups))
    run_files.write_metrics(run_dir.root, metrics)
    log.info("two-level %s seed %d: composed val acc %.4f, test acc %.4f over %s -> %s", cfg.model.name, cfg.seed,
             metrics["val"]["accuracy"], metrics["test"]["accuracy"], bundle.class_names, run_dir.root)
    return metrics


def _evaluate_split(bundle, split: str, groups, level1, level2, cfg, device, amp: bool, run_dir) -> dict:
    """The composed prediction on one split: level 1 picks the group, the group's level 2 the class
    (a one-class group is its class); joint probabilities p(group) x p(class | group). Writes the
    split's predictions with the group columns; returns its metrics and eval img/s."""
    classes = bundle.class_names
    group_of = {c: g for g, members in groups.items() for c in members}
    level1_model, level1_names, _ = level1
    data = bundle.splits[split]
    p1, seconds = _predict(level1_model, data, cfg, device, amp)
    n = len(p1)
    labels = data.labels[:n].cpu().numpy()
    joint = np.zeros((n, len(classes)))
    cascade = np.zeros(n, dtype=int)
    group_pred = p1.argmax(1)
    for g, members in groups.items():
        gi = level1_names.index(g)
        chosen = group_pred == gi
        if g in level2:
            model, names, _ = level2[g]
            p2, s2 = _predict(model, data, cfg, device, amp)
            seconds += s2
            cols = [classes.index(c) for c in names]
            joint[:, cols] = p1[:, [gi]] * p2
            cascade[chosen] = np.asarray(cols)[p2[chosen].argmax(1)]
        else:
            joint[:, classes.index(members[0])] = p1[:, gi]
            cascade[chosen] = classes.index(members[0])
    run_files.write_predictions(run_dir.predictions(split), data.paths[:n],
                           {"labels": labels, "preds": cascade, "probs": joint}, classes,
                           extra={"group_label": [group_of[classes[i]] for i in labels],
                                  "group_predicted": [level1_names[i] for i in group_pred]})
    return {**classification_metrics(labels, cascade, classes), "eval_img_s": n / seconds if seconds > 0 else math.nan}


def _excluded_by_class(eval_data, level1_dir: Path, groups) -> dict[str, int]:
    """Images of classes outside the groups, per class, from the split manifest (whole dataset)."""
    from bench.data.split import manifest_filename

    group_of = {c for members in groups.values() for c in members}
    manifest_path = level1_dir / manifest_filename(
        eval_data.split_mode, n_folds=eval_data.n_folds, fold=eval_data.fold, fractions=list(eval_data.split_fractions))
    if not manifest_path.exists():
        return {}
    manifest = pd.read_csv(manifest_path, dtype=str, keep_default_na=False)
    outside = manifest[~manifest["label"].isin(group_of)]
    excluded = {str(k): int(v) for k, v in outside.groupby("label").size().items()}
    if excluded:
        log.info("two-level: %d image(s) of classes outside the groups excluded: %s", sum(excluded.values()), excluded)
    return excluded


def _composed_metrics(cfg, chash: str, bundle, groups, level1, level2, metrics_of, image_size: int, device,
                      excluded_by_class: dict) -> dict:
    """The combined row's metrics.json: the composed prediction's val/test, costs summed over the
    levels, and both scorings labelled (see the two_level entry)."""
    from bench.training.device import env_info
    from bench.models import count_gflops, count_params

    level1_model, level1_names, level1_metrics = level1
    models = [level1_model, *(m for m, _, _ in level2.values())]
    level2_gflops = [count_gflops(m, image_size) for m, _, _ in level2.values()]
    level_metrics = [level1_metrics, *(lm for _, _, lm in level2.values())]
    return run_record(
        experiment=cfg.experiment_name, model=COMPOSED_PREFIX + cfg.model.name, seed=cfg.seed, task="classification",
        classes=bundle.class_names, epochs=cfg.trainer.epochs, history=None, best_epoch=None,
        select_by=cfg.trainer.select_by,  # each level's best epoch; the composed classifier has none of its own
        warnings=[w for m in level_metrics for w in m.get("warnings") or []],
        val={k: v for k, v in metrics_of["val"].items() if k != "eval_img_s"},
        test={k: v for k, v in metrics_of["test"].items() if k != "eval_img_s"},
        params_m=sum(count_params(m) for m in models),
        # Per image: level 1 and one level-2 network (their mean, as the groups share one architecture).
        gflops=count_gflops(level1_model, image_size) + (float(np.mean(level2_gflops)) if level2_gflops else 0.0),
        input_size=image_size, trainable_params_m=sum(_float(m.get("trainable_params_m")) for m in level_metrics),
        train_time_s=sum(_float(m.get("train_time_s")) for m in level_metrics),
        eval_img_s=metrics_of["test"]["eval_img_s"],
        peak_mem_mb=_nanmax([_float(m.get("peak_mem_mb")) for m in level_metrics]),
        # The levels share the recipe: their batch, precision and weights are level 1's.
        batch_size=cfg.trainer.batch_size, grad_accum=level1_metrics.get("grad_accum"),
        oom_retry=any(bool(m.get("oom_retry")) for m in level_metrics), amp=level1_metrics.get("amp"),
        channels_last=level1_metrics.get("channels_last"), precision=level1_metrics.get("precision"),
        weights=level1_metrics.get("weights"),
        n_excluded=bundle.n_left_out, data_root=bundle.root, device=str(device), env=env_info(device),
        config_hash=chash, recipe=recipe_of(cfg), protocol_deviations=protocol_deviations(cfg),
        excluded_by_class=excluded_by_class,
        two_level={
            # Two ways to score the cascade, labelled: the composed four-class prediction (val/test
            # above: accuracy = recall over all classes), and per level the binary classifier's own
            # test accuracy (TP+TN)/N, which is what Cheuque et al.'s Table 3 reports: compare the
            # paper's numbers with these, like for like.
            "scoring": {"composed": "multi-class accuracy of the composed prediction (top-level val/test)",
                        "per_level": "binary accuracy (TP+TN)/N of each level on its own test images "
                                     "(the paper's Table 3)"},
            "groups": groups,
            "level1": _level_summary(level1_metrics, level1_names),
            "level2": {g: _level_summary(level2[g][2], level2[g][1]) if g in level2 else
                       {"classes": members, "run_dir": None, "note": "one class: no level-2 classifier"}
                       for g, members in groups.items()},
        },
    )


def _level_summary(metrics: dict, names: list[str]) -> dict[str, Any]:
    test = metrics["test"]
    return {"classes": names, "run_dir": metrics.get("run_dir"),
            "val_acc": metrics["val"]["accuracy"], "test_acc": test["accuracy"],
            # For a two-class level, accuracy is (TP+TN)/N: the paper's per-level Table 3 number.
            "test_binary_accuracy": test["accuracy"] if len(names) == 2 else None,
            "test_precision": test["macro"]["precision"], "test_recall": test["macro"]["sensitivity"],
            "test_f1": test["macro"]["f1"], "best_epoch": metrics.get("best_epoch")}


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _nanmax(values: list[float]) -> float:
    finite = [v for v in values if v == v]
    return max(finite) if finite else math.nan

