"""``bench-train``: fine-tune and evaluate one architecture (or sweep many with ``-m``).

``train(cfg) -> dict`` is the whole job and is pure Python (tests call it directly);
``hydra_main`` is a thin ``@hydra.main`` over it and ``cli`` the console script,
which checks model names before Hydra starts and turns failed runs into a non-zero
exit status at the end of a sweep.

A run never raises for a model's failure (exception, NaN loss, out of memory): it
records status ``failed`` with the error in its run folder and returns, so a sweep
goes on to the next model; Ctrl-C still stops everything (the run resumes later).
"""

from __future__ import annotations

import copy
import gc
import logging
import pickle
import platform
import sys
import time
import traceback
from pathlib import Path

import hydra
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from bench import runs
from bench.data.build import build_data, geometry_of
from bench.data.loader import BatchLoader, sampler_weights
from bench.data.transforms import BatchAugment, Normalize
from bench.config import CONF_DIR, check_config
from bench.engine import evaluate, loss_class_weights, merge_epoch_parts, train_one_epoch
from bench.leaderboard import refresh_leaderboard
from bench.metrics import SELECT_BY, classification_metrics, collapse_warning, confidence_threshold
from bench.models import count_gflops, count_params, create_model, get_model_spec
from bench.precision import choose_cpu_precision, precision_record_key, read_precision_records, resolve_precision
from bench.protocol import protocol_deviations, recipe_of
from bench.loggers import flatten, make_logger
from bench.threads import thread_policy

log = logging.getLogger("bench.train")

# Config keys that do not change results: excluded from the run's identity hash, so
# e.g. turning progress bars off does not retrain a finished model.
# cv / two_level / svm drive other commands (bench-cv, bench-svm); a training run's own data
# selection is in data.* (fold, classes, class_map), which stays in the hash.
NON_RESULT_KEYS = {"paths": None, "trainer": ("progress", "num_threads", "checkpoint_every_s"), "data": ("decode_workers", "store"),
                   "cv": None, "two_level": None, "svm": None, "logger": None}
# Options added after runs were already on disk, with the value that does what the code did before
# them: at that value they stay out of the identity hash, so adding an option never retrains (or
# sets aside) a finished run whose config did not ask for it.
NEUTRAL_OPTIONS = {
    ("trainer", "select_by"): "val_acc", ("trainer", "class_weights"): None, ("trainer", "sampler"): "shuffle",
    ("model", "weights_tag"): None, ("trainer", "sched_interval"): "epoch", ("data", "split_rounding"): "round", ("data", "geometry"): "resize",
    ("data", "crop_fraction"): 0.875,
    ("data", "augment", "brightness"): 0.0, ("data", "augment", "contrast"): 0.0,
    ("data", "augment", "saturation"): 0.0, ("data", "augment", "hue"): 0.0,
}

# Hydra flags that print something and train nothing: they skip the preflight and go to Hydra as they are.
HYDRA_INFO_FLAGS = ("--help", "-h", "--cfg", "-c", "--info", "-i", "--hydra-help", "--shell-completion", "-sc",
                    "--resolve", "--package", "-p")

_RESULTS: list[dict] = []  # what this process's runs returned (read by cli at the end)
_SWEEP: dict = {}  # planned run count and start time of a bench-train command (for progress lines)


# --------------------------------------------------------------------------- set-up
def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"trainer.device={name!r} but CUDA is not available; use trainer.device=auto or cpu.")
    return device


def run_identity(cfg: DictConfig) -> tuple[dict, str]:
    """The resolved config as a plain dict and its hash over the keys that change results."""
    container = OmegaConf.to_container(cfg, resolve=True)
    ident = {}
    for key, value in container.items():
        drop = NON_RESULT_KEYS.get(key, ())
        if drop is None:
            continue
        ident[key] = {k: v for k, v in value.items() if k not in drop} if isinstance(value, dict) else value
    ident = copy.deepcopy(ident)  # nested dicts are shared with the container written to config.yaml
    for path, neutral in NEUTRAL_OPTIONS.items():
        *parents, leaf = path
        node = ident
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node and node[leaf] == neutral:
            del node[leaf]
    return container, runs.config_hash(ident)


def env_info(device: torch.device) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "platform": platform.platform(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
    }
    return info


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by tensors on CUDA; on CPU the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    except ImportError:  # Windows
        return float("nan")


# --------------------------------------------------------------------------- outputs
def predictions_frame(paths, result: dict, class_names) -> pd.DataFrame:
    """Per-image predictions: path, label, predicted, one probability column per class."""
    frame = pd.DataFrame(
        {
            "path": paths,
            "label": [class_names[i] for i in result["labels"]],
            "predicted": [class_names[i] for i in result["preds"]],
        }
    )
    for j, name in enumerate(class_names):
        frame[f"prob_{name}"] = result["probs"][:, j].round(6)
    return frame


def save_checkpoint(path: Path, weights: dict, *, model_name, class_names, input_size, data_cfg,
                    durable: bool = True, **extra) -> None:
    """Weights plus what a predictor needs to use them (class order, input size, normalisation)."""
    runs.save_torch_atomic(
        path,
        {
            "model": weights,
            "model_name": model_name,
            "class_names": list(class_names),
            "input_size": int(input_size),
            "mean": list(data_cfg.mean),
            "std": list(data_cfg.std),
            **extra,
        },
        durable=durable,
    )


def _unwrap(model):
    return getattr(model, "_orig_mod", model)  # torch.compile wraps the module


# --------------------------------------------------------------------------- the run
def train(cfg: DictConfig) -> dict:
    """Train, select by validation, evaluate on test, write the run folder; never raises
    for a model failure (the returned dict has ``status`` and ``error``)."""
    exp_dir = runs.experiment_dir(cfg.paths.results_dir, cfg.experiment_name)
    model_name, seed = cfg.model.name, int(cfg.seed)
    run_dir = runs.RunDir.for_run(exp_dir, model_name, seed)
    container, chash = run_identity(cfg)
    summary = {"model": model_name, "seed": seed, "experiment": cfg.experiment_name, "run_dir": str(run_dir.root)}
    try:
        with run_dir.lock():
            return _train_locked(cfg, run_dir, exp_dir, container, chash, summary)
    except runs.RunBusy as busy:
        # Another process trains this folder: the same run (two identical sweeps started together)
        # is left to it; another config must not move or overwrite it under its feet.
        holder = run_dir.read_status() or {}
        if holder.get("config_hash") == chash:
            log.info("%s seed %d: being trained by %s; skipped here", model_name, seed, busy.holder)
            return {**summary, "status": "skipped", "note": f"being trained by {busy.holder}"}
        error = (f"{run_dir.root} is being trained by {busy.holder} with another config; this run did not start "
                 "and nothing of that run was touched. Rerun this command when that one is done, or give this "
                 "run its own experiment_name=...")
        log.error("%s seed %d: %s", model_name, seed, error)
        return {**summary, "status": runs.STATUS_FAILED, "error": error}


def _train_locked(cfg, run_dir: runs.RunDir, exp_dir: Path, container: dict, chash: str, summary: dict) -> dict:
    model_name, seed = summary["model"], summary["seed"]
    metrics = run_dir.completed_metrics(chash)
    if metrics is not None:
        log.info("%s seed %d: already completed with this config, skipped (%s)", model_name, seed, run_dir.root)
        return {**summary, "status": "skipped", "val_acc": metrics["val"]["accuracy"],
                "test_acc": metrics["test"]["accuracy"]}

    try:
        run_dir.root.mkdir(parents=True, exist_ok=True)
        for folder in (run_dir.root, exp_dir):  # checkpoint / table temporaries of a killed earlier process
            runs.remove_stale_temporaries(folder)
        runs.write_text_atomic(run_dir.config, OmegaConf.to_yaml(container))
        run_dir.write_status(runs.STATUS_RUNNING, config_hash=chash, model=model_name, seed=seed)
        metrics = _fit_with_oom_retry(cfg, run_dir, exp_dir, chash)
        run_dir.write_status(runs.STATUS_COMPLETED, config_hash=chash, model=model_name, seed=seed)
    except KeyboardInterrupt:
        raise  # stays "running": the next invocation resumes from last.pt
    except Exception as exc:  # a failed model is a row with an error, never a crash of the sweep
        error = runs.explain_error(exc, run_dir.root)
        try:
            run_dir.record_failure(exc, traceback.format_exc(), config_hash=chash, model=model_name, seed=seed,
                                   error=error)
        except OSError as record_exc:  # e.g. the disk is full: say so once, without a chain of tracebacks
            error += f" (the failure could not be recorded in {run_dir.status} either: {record_exc})"
        log.error("%s seed %d FAILED: %s", model_name, seed, error)
        result = {**summary, "status": runs.STATUS_FAILED, "error": error}
    else:
        result = {**summary, "status": runs.STATUS_COMPLETED, "val_acc": metrics["val"]["accuracy"],
                  "test_acc": metrics["test"]["accuracy"]}
    finally:
        _release_memory()
    refresh_leaderboard(exp_dir)
    return result


def _fit_with_oom_retry(cfg, run_dir, exp_dir, chash) -> dict:
    """On CUDA out-of-memory, retry once with half the micro-batch and twice the gradient
    accumulation, so the effective batch (and the protocol) stays the same."""
    with thread_policy(cfg.trainer.num_threads, cfg.paths.cache_dir) as threads, \
            make_logger(cfg, runs.model_dirname(cfg.model.name), int(cfg.seed)) as tracker:
        tracker.params(flatten(OmegaConf.to_container(cfg, resolve=True)))
        try:
            return _fit(cfg, run_dir, exp_dir, chash, threads, tracker, grad_accum=cfg.trainer.grad_accum)
        except torch.cuda.OutOfMemoryError as exc:
            if cfg.trainer.batch_size // (2 * cfg.trainer.grad_accum) < 1:
                raise
            message = str(exc).splitlines()[0]
        # Retry outside the except block: there the traceback still holds the failed attempt's
        # frames, and with them its model, optimizer state and batches on the GPU.
        log.warning("CUDA out of memory (%s); retrying with half the micro-batch", message)
        _release_memory()
        return _fit(cfg, run_dir, exp_dir, chash, threads, tracker, grad_accum=2 * cfg.trainer.grad_accum,
                    oom_retry=True)


def _fit(cfg, run_dir: runs.RunDir, exp_dir: Path, chash: str, threads, tracker, *, grad_accum: int,
         oom_retry: bool = False) -> dict:
    tcfg = cfg.trainer
    check_config(cfg)  # the preflight said so already; a config that reaches here by the Python API too
    threads.rebalance()
    device = resolve_device(tcfg.device)
    on_cuda = device.type == "cuda"
    amp, channels_last = resolve_precision(tcfg, device)  # amp None: a timed trial decides (CPU)
    if on_cuda:
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
        torch.cuda.reset_peak_memory_stats(device)

    spec = get_model_spec(cfg.model.name)
    image_size = int(cfg.data.image_size or spec.input_size)
    if image_size < spec.min_train_size:
        raise ValueError(
            f"data.image_size={image_size} is below {cfg.model.name}'s minimum training input of "
            f"{spec.min_train_size} px; set data.image_size>={spec.min_train_size} or leave it null "
            f"for the model's own {spec.input_size} px."
        )

    bundle = build_data(cfg.data, image_size=image_size, exp_dir=exp_dir, cache_dir=cfg.paths.cache_dir)
    log.info("data: %s", bundle.summary())
    runs.write_csv_atomic(run_dir.excluded, bundle.excluded)

    torch.manual_seed(cfg.seed)  # head initialisation (and whole net when not pretrained)
    model = create_model(
        cfg.model.name, num_classes=bundle.num_classes, pretrained=cfg.model.pretrained, weights=cfg.model.weights,
        weights_tag=cfg.model.get("weights_tag"),
    )
    from bench.models.heads import configure_model  # MLP head, frozen backbone / blocks

    model = configure_model(model, cfg.model, num_classes=bundle.num_classes)
    params_m = count_params(model)
    gflops = count_gflops(model, image_size)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = instantiate(cfg.optim)(params=[p for p in model.parameters() if p.requires_grad])
    scheduler = instantiate(cfg.sched)(optimizer=optimizer)
    per_step = tcfg.get("sched_interval", "epoch") == "step"  # trainer.sched_interval
    train_labels = bundle.splits["train"].labels.cpu()
    class_weight = loss_class_weights(tcfg.class_weights, train_labels, bundle.num_classes)
    # Training loss (optionally class-weighted); validation loss stays the plain, comparable one.
    train_criterion = torch.nn.CrossEntropyLoss(
        weight=None if class_weight is None else class_weight.to(device), label_smoothing=tcfg.label_smoothing)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=tcfg.label_smoothing)
    train_model = torch.compile(model) if tcfg.compile else model

    splits = bundle.splits
    if device.type != "cpu":
        splits = {k: _to_device_if_fits(v, device) for k, v in splits.items()}
    norm = Normalize(cfg.data.mean, cfg.data.std, device=device)
    micro_batch = max(1, tcfg.batch_size // grad_accum)
    aug = cfg.data.augment
    train_loader = BatchLoader(
        splits["train"], micro_batch, normalize=norm, device=device, shuffle=True,
        augment=BatchAugment.from_config(aug), channels_last=channels_last,
        seed=cfg.seed, max_batches=tcfg.max_batches,
        sample_weights=sampler_weights(tcfg.sampler, train_labels, bundle.num_classes),
    )

    def eval_loader(split):
        return BatchLoader(splits[split], tcfg.eval_batch_size, normalize=norm, device=device,
                           channels_last=channels_last, max_batches=tcfg.max_batches)

    state = _resume_state(run_dir, chash, model, optimizer, scheduler)
    precision_cache = Path(cfg.paths.cache_dir) / "cpu_precision.json" if cfg.paths.cache_dir else None
    precision_key = precision_record_key(cfg.model.name, image_size, micro_batch, channels_last)
    if amp is None and state["next_epoch"] > 0:  # a resumed run keeps the precision it started with
        amp = state.get("amp")
        if amp is None:
            amp = bool(read_precision_records(precision_cache).get(precision_key, {}).get("amp", False))
    history: list[dict] = state["history"]
    best = {"score": state["best_score"], "epoch": state["best_epoch"]}
    best_val = None  # the best epoch's validation result, when that epoch ran in this process
    best_weights = None  # the best epoch's weights (CPU copy) until they are written to best.pt
    last_write = time.monotonic()
    ckpt_meta = dict(model_name=cfg.model.name, class_names=bundle.class_names, input_size=image_size,
                     data_cfg=cfg.data, pretrained=bool(cfg.model.pretrained),
                     geometry=list(geometry_of(cfg.data)))  # bench-predict decodes new images the same way

    for epoch in range(state["next_epoch"], tcfg.epochs):
        threads.rebalance()  # jobs that started or ended since: this job's share of the cores
        # Global RNG (dropout) seeded per epoch: a resumed epoch replays an uninterrupted one.
        torch.manual_seed(cfg.seed * 1_000_003 + epoch)
        train_loader.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        with _progress(tcfg.progress, len(train_loader), f"{cfg.model.name} epoch {epoch + 1}/{tcfg.epochs}") as bar:
            batches, parts = train_loader, []
            if amp is None:  # first epoch of a fresh run on a CPU with bf16 kernels
                batches = iter(train_loader)
                amp, parts = choose_cpu_precision(
                    train_model, batches, optimizer, train_criterion, device=device, aux_weight=spec.aux_weight,
                    grad_accum=grad_accum, on_batch=bar.on_batch, record_path=precision_cache,
                    key=precision_key, model_name=cfg.model.name,
                )
            tr = train_one_epoch(
                train_model, batches, optimizer, train_criterion, device=device, amp=amp,
                aux_weight=spec.aux_weight, grad_accum=grad_accum, on_batch=bar.on_batch,
                on_step=scheduler.step if per_step else None,
            )
            if parts:
                tr = merge_epoch_parts([*parts, tr])
            va = evaluate(train_model, eval_loader("val"), criterion, device=device, amp=amp)
            bar.done(tr, va)
        if not per_step:
            scheduler.step()
        va_scores = {"val_acc": va["acc"],
                     "val_balanced_acc": SELECT_BY["val_balanced_acc"](va["labels"], va["preds"], bundle.num_classes),
                     "val_macro_f1": SELECT_BY["val_macro_f1"](va["labels"], va["preds"], bundle.num_classes)}
        history.append({
            "epoch": epoch + 1, "lr": lr, "train_loss": tr["loss"], "train_acc": tr["acc"],
            "val_loss": va["loss"], "val_acc": va["acc"], "val_balanced_acc": va_scores["val_balanced_acc"],
            "val_macro_f1": va_scores["val_macro_f1"], "seconds": tr["seconds"] + va["seconds"],
            "train_img_s": tr["img_s"],
        })
        tracker.epoch(epoch + 1, {k: float(v) for k, v in history[-1].items() if k not in ("epoch", "seconds")})
        log.info("%s epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f bal %.4f | %.0f img/s",
                 cfg.model.name, epoch + 1, tcfg.epochs, tr["loss"], tr["acc"], va["loss"], va["acc"],
                 va_scores["val_balanced_acc"], tr["img_s"])
        # Best by trainer.select_by on validation; a tie keeps the earlier epoch (strictly greater to replace).
        score = va_scores[tcfg.select_by]
        if score > best["score"]:
            best = {"score": score, "epoch": epoch + 1}
            best_val = va
            best_weights = {k: v.detach().to("cpu", copy=True) for k, v in _unwrap(model).state_dict().items()}
        runs.write_csv_atomic(run_dir.history, pd.DataFrame(history))
        final = epoch + 1 == tcfg.epochs
        if final or time.monotonic() - last_write >= tcfg.checkpoint_every_s:
            # best.pt first: on resume it is the record of the best epoch (see _resume_state).
            if best_weights is not None:
                save_checkpoint(run_dir.best_ckpt, best_weights, epoch=best["epoch"], val_score=best["score"],
                                select_by=tcfg.select_by, durable=False, **ckpt_meta)
                best_weights = None
            runs.save_torch_atomic(run_dir.last_ckpt, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": None,  # bf16 autocast needs no loss scaling
                "epoch": epoch + 1, "best_score": best["score"], "best_epoch": best["epoch"],
                "history": history, "config_hash": chash, "rng": torch.get_rng_state(), "amp": amp,
            }, durable=False)  # an unreadable last.pt after a power cut only means starting over
            last_write = time.monotonic()

    if not run_dir.best_ckpt.exists():
        raise RuntimeError("no epoch was trained (trainer.epochs=0?); nothing to evaluate")
    runs.fsync_file(run_dir.best_ckpt)  # durable before the run can be marked completed
    amp = bool(amp)
    best_state = torch.load(run_dir.best_ckpt, map_location="cpu", weights_only=True)
    model.load_state_dict(best_state["model"])
    results = {}
    for split in ("val", "test"):
        if split == "val" and best_val is not None:
            results[split] = best_val  # same weights as best.pt: evaluating again would give the same
        else:
            results[split] = evaluate(model, eval_loader(split), criterion, device=device, amp=amp)
        runs.write_csv_atomic(
            run_dir.predictions(split),
            predictions_frame(splits[split].paths[: results[split]["n"]], results[split], bundle.class_names),
        )
    precision = "bf16" if amp else "fp32"
    collapsed = collapse_warning(results["val"]["labels"], results["val"]["preds"], bundle.class_names)
    if collapsed:
        log.warning("%s seed %d: %s", cfg.model.name, cfg.seed, collapsed)
    warnings = [*bundle.warnings, *([collapsed] if collapsed else [])]
    metrics = {
        "experiment": cfg.experiment_name, "model": cfg.model.name, "seed": int(cfg.seed),
        "status": runs.STATUS_COMPLETED, "classes": bundle.class_names,
        "epochs": int(tcfg.epochs), "epochs_run": len(history), "best_epoch": best["epoch"],
        "select_by": tcfg.select_by, "warnings": warnings,
        "confidence_threshold": confidence_threshold(results["val"]["probs"].max(axis=1),
                                                     results["val"]["preds"] == results["val"]["labels"]),
        "val": classification_metrics(results["val"]["labels"], results["val"]["preds"], bundle.class_names),
        "test": classification_metrics(results["test"]["labels"], results["test"]["preds"], bundle.class_names),
        "params_m": params_m, "gflops": gflops, "input_size": image_size,
        "input_geometry": geometry_text(geometry_of(cfg.data), image_size),
        "trainable_params_m": count_params(model, trainable_only=True),
        "train_time_s": sum(h["seconds"] for h in history),
        "train_img_s": _mean([h["train_img_s"] for h in history]),
        "eval_img_s": results["test"]["img_s"],
        "peak_mem_mb": peak_memory_mb(device),
        "batch_size": int(tcfg.batch_size), "grad_accum": grad_accum, "oom_retry": oom_retry,
        "amp": amp, "channels_last": channels_last, "precision": precision,
        "weights": weights_used(cfg),
        # Left out entirely; files with identical bytes under two labels are listed in excluded.csv
        # too but train (they are only kept out of validation and test).
        "n_excluded": bundle.n_left_out, "n_train_only_duplicates": len(bundle.excluded) - bundle.n_left_out,
        "data_root": bundle.root,
        "device": str(device), "env": env_info(device), "config_hash": chash,
        # vs. the paper's recipe ([] = follows it), including what was decided at run time (precision)
        "protocol_deviations": protocol_deviations(cfg, precision=precision),
        "recipe": recipe_of(cfg),  # which paper's recipe those departures are from
    }
    runs.write_json_atomic(run_dir.metrics, metrics)
    tracker.final(metrics)
    log.info("%s seed %d: best epoch %d, val acc %.4f, test acc %.4f -> %s", cfg.model.name, cfg.seed,
             best["epoch"], metrics["val"]["accuracy"], metrics["test"]["accuracy"], run_dir.root)
    return metrics


def _resume_state(run_dir: runs.RunDir, chash: str, model, optimizer, scheduler) -> dict:
    """Restore the last finished epoch of an interrupted run with the same config."""
    fresh = {"next_epoch": 0, "history": [], "best_score": -1.0, "best_epoch": 0, "amp": None}
    if not run_dir.last_ckpt.exists():
        return fresh
    try:
        state = torch.load(run_dir.last_ckpt, map_location="cpu", weights_only=True)
        if state.get("config_hash") == chash and state["best_epoch"] > 0:
            # best.pt is written just before last.pt, so after a kill between the two it can be
            # one checkpoint newer: its own epoch and accuracy describe the weights it holds.
            best_ckpt = torch.load(run_dir.best_ckpt, map_location="cpu", weights_only=True)
            # (val_acc / best_val_acc: what checkpoints written before trainer.select_by called the score)
            state["best_epoch"] = int(best_ckpt["epoch"])
            state["best_score"] = float(best_ckpt.get("val_score", best_ckpt.get("val_acc")))
        if "best_score" not in state and "best_val_acc" in state:
            state["best_score"] = state["best_val_acc"]
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, pickle.UnpicklingError) as exc:
        # Truncated by a crash of the machine (per-epoch checkpoints are not fsynced): the
        # finished epochs are lost, not the sweep.
        log.warning("cannot resume %s (%s: %s); training it from the start", run_dir.root, type(exc).__name__, exc)
        return fresh
    if state.get("config_hash") != chash:
        return fresh
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    log.info("resuming %s after epoch %d", run_dir.root, state["epoch"])
    return {"next_epoch": state["epoch"], "history": list(state["history"]),
            "best_score": state["best_score"], "best_epoch": state["best_epoch"], "amp": state.get("amp")}


def geometry_text(geometry: tuple, size: int) -> str:
    """``resize to 224`` or ``resize shorter side to 256, centre crop 224``."""
    if geometry[0] == "resize":
        return f"resize to {size}"
    from bench.data.imagefolder import resize_crop_size

    return f"resize shorter side to {resize_crop_size(size, geometry[1])}, centre crop {size}"


def weights_used(cfg) -> str:
    """What the network started from: ``local:<path>``, the resolved ImageNet weights (e.g.
    ``IMAGENET1K_V1``; the latest if model.weights_tag is null), or ``scratch``."""
    if cfg.model.weights:
        return f"local:{cfg.model.weights}"
    if not cfg.model.pretrained:
        return "scratch"
    from bench.models.weights import resolved_weights_tag

    try:
        return resolved_weights_tag(cfg.model.name, cfg.model.get("weights_tag")) or "pretrained"
    except Exception:  # a custom model's own weights: nothing to resolve
        return "pretrained"


def _to_device_if_fits(split, device):
    """Keep the uint8 store on the GPU when it fits (no host copies per batch); else stay on the host."""
    try:
        return split.to(device)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        log.warning("the decoded images do not fit on %s; batches are copied from pinned host memory", device)
        return split


def _mean(values) -> float:
    values = [v for v in values if v == v]
    return sum(values) / len(values) if values else float("nan")


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class _progress:
    """A tqdm bar over one epoch's batches (or nothing when trainer.progress=false).

    When stderr is not a terminal (an overnight sweep logging to a file, a Slurm job) the bar
    is redrawn at most every ``LOG_INTERVAL_S`` seconds, so the log shows progress within long
    epochs without thousands of carriage-return lines.
    """

    LOG_INTERVAL_S = 30.0

    def __init__(self, enabled: bool, total: int, desc: str):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            interactive = sys.stderr.isatty()
            self.bar = tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True,
                            mininterval=0.1 if interactive else self.LOG_INTERVAL_S)
        self.start = time.perf_counter()
        self.n = 0
        self.count = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()

    def on_batch(self, info: dict) -> None:
        if self.bar is None:
            return
        self.n += info["n"]
        self.count += 1
        self.bar.update(1)
        if self.count % 10 == 0:  # .item() syncs the GPU; don't do it every batch
            rate = self.n / max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix(loss=f"{info['loss'].item():.3f}", img_s=f"{rate:.0f}", refresh=False)

    def done(self, tr: dict, va: dict) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{tr['loss']:.3f}", acc=f"{tr['acc']:.3f}", val_acc=f"{va['acc']:.3f}",
                                 img_s=f"{tr['img_s']:.0f}")


# --------------------------------------------------------------------------- entry points


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    result = train(cfg)
    _RESULTS.append(result)
    _log_sweep_progress(_RESULTS, _SWEEP)
    return result.get("val_acc")  # what a hyper-parameter sweeper would optimise


def _log_sweep_progress(results: list[dict], sweep: dict) -> None:
    """One line after each run of a sweep: how many are done, failed and skipped, and the time."""
    total = sweep.get("total", 0)
    if total <= 1:
        return
    count = {s: sum(r["status"] == s for r in results) for s in (runs.STATUS_FAILED, "skipped")}
    elapsed = time.perf_counter() - sweep["start"]
    log.info("sweep: %d of %d run(s) done (%d failed, %d already complete) after %s", len(results), total,
             count[runs.STATUS_FAILED], count["skipped"], _duration(elapsed))


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def cli(argv: list[str] | None = None) -> int:
    """Console script: validate names and run the preflight, run Hydra, then print the
    leaderboard and exit non-zero if any run failed."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from bench.cli_checks import (check_model_overrides, group_option_hint, register_requested_timm_models,
                                  unknown_key_hint)
    from bench.config import register_configs
    from bench.preflight import plan_runs, preflight

    args = sys.argv[1:] if argv is None else argv
    problem = check_model_overrides(args)
    if problem:
        print(f"bench-train: {problem}", file=sys.stderr)
        return 2
    register_configs()
    register_requested_timm_models(args)
    if not any(a.startswith(HYDRA_INFO_FLAGS) for a in args):
        try:
            plan = plan_runs(args)
        except (HydraException, OmegaConfBaseException) as exc:
            hint = group_option_hint(args) or unknown_key_hint(args)
            print(f"bench-train: the configuration does not compose: {hint or exc}", file=sys.stderr)
            return 2
        if plan.cfg.cv.folds or plan.cfg.cv.repeats or plan.cfg.two_level.enabled:
            print(f"bench-train: experiment_name={plan.cfg.experiment_name} is a cross-validation protocol "
                  "(cv.folds, cv.repeats or two_level.enabled is set), which bench-train would silently run as "
                  "one ordinary split. Run it with `bench-cv` and the same arguments.", file=sys.stderr)
            return 2
        report = preflight(plan)
        print(f"preflight for {plan.n_runs} run(s) ({', '.join(plan.models[:6])}"
              f"{', ...' if len(plan.models) > 6 else ''}):\n{report.format()}", file=sys.stderr)
        if not report.ok:
            print(f"bench-train: preflight found {len(report.problems)} problem(s); nothing was trained.",
                  file=sys.stderr)
            return 2
    else:
        plan = None
    _RESULTS.clear()
    _SWEEP.clear()
    if plan is not None:
        _SWEEP.update(total=plan.n_runs, start=time.perf_counter())
    # Hydra's argparse wants flags before overrides; accept `-m` anywhere on the line.
    flags = [a for a in args if a in ("-m", "--multirun")]
    sys.argv = [sys.argv[0], *flags, *[a for a in args if a not in flags]]
    # What is alive now (torch, hydra, the model zoo: ~10^6 objects) lives as long as the
    # process: keep it out of the collector, so the collection after each run of a sweep
    # looks at that run's objects only (2 ms instead of 0.2 s).
    gc.freeze()
    hydra_main()
    return _report(_RESULTS, plan)


def _report(results: list[dict], plan) -> int:
    """End-of-sweep summary. Runs launched in other processes (submitit) are read back
    from the leaderboard, since their return values never reach this process."""
    from bench.leaderboard import build_leaderboard, format_leaderboard, ranking_text

    if plan is None:
        return 0
    exp_dirs = sorted({str(Path(r["run_dir"]).parents[2]) for r in results}) or [
        str(runs.experiment_dir(plan.cfg.paths.results_dir, plan.cfg.experiment_name))]
    failed = [r for r in results if r["status"] == runs.STATUS_FAILED]
    for exp_dir in exp_dirs:
        if not (Path(exp_dir) / "runs").is_dir():
            continue
        board = build_leaderboard(exp_dir)
        if plan.multirun:
            print(f"\nLeaderboard of {exp_dir} ({ranking_text(board)}):")
            print(format_leaderboard(board))
        if not results:  # remote launcher: failures of the planned runs, from the run folders
            planned = {(m, s) for m in plan.models for s in plan.seeds}
            for row in board[board["status"] == runs.STATUS_FAILED].itertuples():
                if (row.model, int(row.seed)) in planned:
                    failed.append({"model": row.model, "seed": int(row.seed), "error": row.error,
                                   "run_dir": exp_dir})
    if failed:
        print(f"\n{len(failed)} run(s) failed:", file=sys.stderr)
        for r in failed:
            print(f"  {r['model']} seed {r['seed']}: {r['error']} ({r['run_dir']})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # python -m bench.train ...
    from bench.commands import run

    sys.exit(run("bench-train"))
