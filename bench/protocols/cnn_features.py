"""Features of frozen CNNs for the SVM protocol (``bench-svm``, :mod:`bench.protocols.svm_features`),
computed once and cached.

Features
    The network's classification head is replaced by ``nn.Identity`` (the head found by
    :mod:`bench.models.blocks`), so a feature is what the head read: VGG16's 4096-d output
    of its penultimate fully connected layer (fc7, after ReLU; dropout is off in eval
    mode), Inception v3's 2048-d globally pooled features, ResNet50's 2048-d pool.
    ``model.head_keep_fc=N`` keeps only the first N of VGG's fully connected layers first, as
    for training (:mod:`bench.models.heads`): ``0`` gives the network with its fully connected
    layers removed, Acevedo et al.'s features (VGG16: the flattened 7x7x512 map, 25,088-d);
    the weights tag then ends in ``-keepfc<N>``. Images
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
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from bench import runs
from bench.data.loader import balance_plan

log = logging.getLogger("bench.svm")

FEATURES_DIR = "features"
FEATURE_FORMAT = 1  # bump when the stored features would change for the same key
SPLITS = ("train", "val", "test")


def feature_extractor(name: str, *, pretrained: bool, weights: Optional[str] = None, seed: int = 0,
                      tag: Optional[str] = None, keep_fc: Optional[int] = None) -> nn.Module:
    """``name`` with its classification head (and the fully connected layers after the first
    ``keep_fc``) replaced by ``nn.Identity``, in eval mode."""
    from bench.models import create_model
    from bench.models._layers import drop_aux_head
    from bench.models.blocks import head_path
    from bench.models.heads import apply_head

    torch.manual_seed(seed)  # the whole network when not pretrained
    model = create_model(name, num_classes=1, pretrained=pretrained, weights=weights, weights_tag=tag)
    apply_head(model, name, 1, [], keep_fc=keep_fc)  # a placeholder head after the kept layers, if any cut
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
                     augment: Optional[dict] = None, desc: Optional[str] = None) -> np.ndarray:
    """Features (N, D) float32 of uint8 images (N, 3, S, S), or of ``images[index]``;
    ``augment``: per-image flips and angles (``BatchAugment.sample``) applied before
    normalisation. ``desc``: a progress bar (images, with the time left) under that name."""
    from bench.data.transforms import apply_augment
    from bench.training.engine import split_outputs

    model.to(device).eval()
    n = len(images) if index is None else len(index)
    out = []
    with image_bar(desc, n) as bar:
        for start in range(0, n, batch_size):
            rows = slice(start, start + batch_size)
            x = (images[rows] if index is None else images[index[rows]]).to(device).float()
            if augment is not None:
                x = apply_augment(x, **{k: v[rows].to(device) for k, v in augment.items()})
            feats, _ = split_outputs(model(normalize(x)))
            out.append(feats.flatten(1).float().cpu().numpy())
            bar.update(len(out[-1]))
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def image_bar(desc: Optional[str], total: int, unit: str = "img"):
    """A tqdm bar (redrawn every 30 s when stderr is a log file, not a terminal), or a silent
    stand-in when ``desc`` is None (trainer.progress=false)."""
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, disable=desc is None,
                mininterval=0.1 if sys.stderr.isatty() else 30.0)


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


def _announce_extras(name: str, n_extra: int, balance_to: int, done: dict) -> None:
    """Before the balanced extras go through the CNN: how many, and how long at the rate the
    splits' features were just computed (the longest silent stretch of bench-svm otherwise)."""
    computed = [f for f in done.values() if not f.cached and f.seconds > 0 and len(f.y)]
    rate = sum(len(f.y) for f in computed) / sum(f.seconds for f in computed) if computed else None
    from bench.training.progress import duration_text

    eta = f"about {duration_text(n_extra / rate)} at {rate:.0f} images/s" if rate else "time unknown (splits were cached)"
    log.info("svm.balance_to=%d: %d augmented training images go through %s once each (%s); "
             "svm.balance_to=null fits on the training split as it is (a recorded departure)",
             balance_to, n_extra, name, eta)


def decoding_meta(cfg, bundle) -> dict:
    """Images decoded or coloured otherwise give other features: cropped (data.geometry) or stain-normalised
    images never reuse the features of plain resized ones. The keys appear only when set, so the caches of
    plain runs stay valid."""
    from bench.data.build import geometry_of
    from bench.data.stain import StainNormalizer

    meta = {}
    if geometry_of(cfg.data)[0] != "resize":
        meta["geometry"] = list(geometry_of(cfg.data))
    if bundle.stain:
        meta["stain"] = StainNormalizer.from_record(bundle.stain).key
    return meta


def compute_features(cfg: DictConfig, exp_dir: Path, name: str, size: int, bundle, device: torch.device
                     ) -> tuple[dict[str, Features], str]:
    """Features of train/val/test (and the balanced extras) of ``name``, from the cache
    where possible; the extractor is built only if something must be computed."""
    from bench.data.transforms import Normalize

    seed = int(cfg.seed)
    keep_fc = cfg.model.get("head_keep_fc")
    tag = weights_tag(name, pretrained=bool(cfg.model.pretrained), weights=cfg.model.weights, seed=seed,
                      tag=cfg.model.get("weights_tag")) + ("" if keep_fc is None else f"-keepfc{int(keep_fc)}")
    base_meta = {"format": FEATURE_FORMAT, "model": name, "weights": tag, "size": int(size),
                 "mean": [float(v) for v in cfg.data.mean], "std": [float(v) for v in cfg.data.std]}
    base_meta.update(decoding_meta(cfg, bundle))
    norm = Normalize(cfg.data.mean, cfg.data.std, device=device)
    batch = int(cfg.trainer.eval_batch_size)
    extractor: list[nn.Module] = []

    def get_extractor() -> nn.Module:
        if not extractor:
            log.info("building feature extractor %s (%s)", name, tag)
            extractor.append(feature_extractor(name, pretrained=bool(cfg.model.pretrained),
                                               weights=cfg.model.weights, seed=seed,
                                               tag=cfg.model.get("weights_tag"), keep_fc=keep_fc))
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
                             index=index, augment=augment,
                             desc=f"{name} {split_name} features" if cfg.trainer.progress else None)
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
    if cfg.svm.balance_to:
        out["extra"] = _balanced_extras(cfg, name, bundle, base_meta, one, out)
    return out, tag


def _balanced_extras(cfg: DictConfig, name: str, bundle, base_meta: dict, one, done: dict) -> Features:
    """The features of svm.balance_to's augmented copies of training images (``one``: compute_features'
    cached computation of one set), announced first with their number and time."""
    from bench.data.transforms import BatchAugment

    n, seed = int(cfg.svm.balance_to), int(cfg.seed)
    train = bundle.splits["train"]
    labels = train.labels.cpu().numpy()
    src = balance_plan(labels, bundle.num_classes, n, np.random.default_rng(seed).permutation)
    _announce_extras(name, len(src), n, done)
    aug = cfg.data.augment
    augmenter = BatchAugment(bool(aug.hflip), bool(aug.vflip), float(aug.rotation), str(aug.interpolation))
    params = augmenter.sample(len(src), torch.Generator().manual_seed(seed))
    split_name = f"train-balanced{n}-seed{seed}"
    meta = {**base_meta, "split": split_name, "train": _fingerprint(train.paths),
            "augment": {"hflip": augmenter.hflip, "vflip": augmenter.vflip, "rotation": augmenter.rotation}}
    return one(split_name, meta, train.images, labels[src], [train.paths[i] for i in src], source=src, augment=params)
