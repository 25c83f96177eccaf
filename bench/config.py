"""Dataclass schemas for every config key the code reads.

The YAML files in ``conf/`` set values; these schemas say which keys exist and
their types, so ``trainer.epocs=3`` fails when the config is composed, before any
data is touched. Optimizer and scheduler stay free-form (``_target_`` + ``_partial_``),
since their keys belong to torch; a typo there fails at instantiation, which also
happens before the first epoch.

Model choices are not YAML files: one config node per registered architecture is
generated from the model registry (``register_configs``), so the registry is the
single list of models and ``model=resnet34`` can never drift from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class AugmentConfig:
    # The published protocol (Gavas & Olpadkar 2021): random horizontal and vertical
    # flips and random rotations up to 60 degrees, on training images only.
    hflip: bool = True
    vflip: bool = True
    rotation: float = 60.0  # degrees, uniform in [-rotation, +rotation]
    interpolation: str = "nearest"  # rotation resampling: nearest (torchvision's default) | bilinear


@dataclass
class DataConfig:
    kind: str = "synthetic"  # synthetic | imagefolder | bloodmnist
    root: Optional[str] = None  # imagefolder / bloodmnist folder
    image_size: Optional[int] = None  # null: the model's own input size (224; 299 for inception_v3)
    split_seed: int = 42  # fixed across model seeds so every run sees the same split
    # Stratified train / validation / test fractions (the paper's 64/24/12).
    split_fractions: List[float] = field(default_factory=lambda: [0.64, 0.24, 0.12])
    mean: List[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: List[float] = field(default_factory=lambda: list(IMAGENET_STD))
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # synthetic dataset: images per class, native size in pixels, generator seed
    synthetic_n_per_class: int = 200
    synthetic_size: int = 96
    synthetic_seed: int = 0
    # bloodmnist: which official resolution file (28, 64, 128, 224); download when missing
    bloodmnist_size: int = 64
    download: bool = False
    decode_workers: int = 0  # processes decoding images into the store; 0 = one per CPU core
    # Where training reads the decoded images: memory | mmap (from the store file, batch by batch,
    # for datasets that do not fit in memory) | auto (mmap only when memory would not suffice).
    store: str = "auto"
    # --- Cross-validation splits (bench/protocols/cv.py sets these per fold; see split.py).
    # holdout: the one split above (manifest.csv). kfold: stratified fold ``fold`` of ``n_folds`` is
    # the test set, validation is carved from the other folds in the train:val ratio of
    # split_fractions. montecarlo: split_fractions drawn afresh for repetition ``fold``.
    split_mode: str = "holdout"  # holdout | kfold | montecarlo
    n_folds: Optional[int] = None  # kfold: number of folds
    fold: Optional[int] = None  # kfold: the test fold; montecarlo: the repetition (0-based)
    # --- Class selection, applied after the split (two-level classifier, transfer to subsets).
    classes: Optional[List[str]] = None  # keep only these classes; the others are excluded (counted)
    class_map: Optional[Dict[str, str]] = None  # rename classes, e.g. to group labels (merges classes)


@dataclass
class ModelConfig:
    name: str = "resnet18"
    pretrained: bool = True  # ImageNet weights, as in the published protocol
    weights: Optional[str] = None  # a local checkpoint or state dict to start from
    # Head and freezing (bench.models.heads): hidden widths of an MLP head replacing the
    # family's head ([] = the family's own head, as built by the registry), dropout after
    # each hidden layer, freeze everything but the head, or train only the last N blocks
    # (per-family definition of a block in bench/models/heads.py; null = all trainable).
    head_hidden: List[int] = field(default_factory=list)
    head_dropout: float = 0.0
    freeze_backbone: bool = False
    trainable_blocks: Optional[int] = None


@dataclass
class TrainerConfig:
    epochs: int = 25
    batch_size: int = 32
    eval_batch_size: int = 128  # evaluation has no gradients; a larger batch is just faster
    device: str = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:1 | mps
    amp: Optional[bool] = None  # bf16 autocast; null = on for CUDA, off elsewhere
    channels_last: Optional[bool] = None  # null = on for CUDA, off elsewhere
    compile: bool = False  # torch.compile the model
    num_threads: Optional[int] = None  # CPU threads for torch; null = torch's default
    grad_accum: int = 1  # micro-batches per optimizer step (effective batch = batch_size)
    label_smoothing: float = 0.0
    progress: bool = True  # tqdm bars
    max_batches: Optional[int] = None  # cap batches per epoch (smoke tests only)
    # Write last.pt (and a new best.pt) after an epoch only when this many seconds have passed
    # since the previous write, and after the last epoch: a 1 GB VGG checkpoint per 8 s GPU
    # epoch would cost a quarter of the time. A kill loses at most this much training. 0 = every epoch.
    checkpoint_every_s: float = 60.0


@dataclass
class PathsConfig:
    results_dir: str = "results"
    # Generated datasets and decoded-image stores; shared across experiments.
    cache_dir: str = "${oc.env:BENCH_CACHE_DIR,.cache/bench}"


def _paper_groups() -> Dict[str, List[str]]:
    # Cheuque et al. 2022 (Diagnostics 12:248): mononuclear vs polymorphonuclear cells.
    return {"mononuclear": ["lymphocyte", "monocyte"], "polymorphonuclear": ["neutrophil", "eosinophil"]}


@dataclass
class CvConfig:
    """Cross-validation, run by ``bench-cv`` (bench/protocols/cv.py); ``bench-train`` ignores it."""

    folds: Optional[int] = None  # stratified k-fold with this many folds
    repeats: Optional[int] = None  # Monte Carlo: this many stratified train/test splits
    test_fraction: float = 0.3  # Monte Carlo test share; the rest is train + val as in split_fractions
    fold: Optional[int] = None  # run only this fold / repetition (e.g. one per job); null = all


@dataclass
class TwoLevelConfig:
    """Two-level classifier (bench/protocols/two_level.py): level 1 tells the groups apart,
    level 2 has one classifier per group for its classes. Classes outside every group are excluded."""

    enabled: bool = False
    groups: Dict[str, List[str]] = field(default_factory=_paper_groups)


@dataclass
class SvmConfig:
    """SVMs on frozen-CNN features (``bench-svm``, bench/protocols/svm_features.py)."""

    feature_models: List[str] = field(default_factory=lambda: ["vgg16", "inception_v3"])
    kernels: List[str] = field(default_factory=lambda: ["rbf", "cubic"])  # rbf | linear | cubic | poly<d>
    cv_folds: int = 5  # stratified k-fold on the training split selects C (and gamma)
    c_grid: List[float] = field(default_factory=lambda: [0.1, 1.0, 10.0, 100.0])
    gamma_grid: List[Any] = field(default_factory=lambda: ["scale"])  # "scale", "auto" or numbers
    coef0: float = 1.0  # polynomial kernels: (gamma <x, y> + coef0)^degree
    standardize: bool = True  # z-score features (fitted inside each CV fold)
    probability: bool = False  # Platt-scaled probabilities; false: softmax of the decision function
    balance_to: Optional[int] = None  # augment minority classes up to N training images (paper: 4096)
    n_jobs: int = 1  # parallel CV fits


@dataclass
class BenchConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: Any = None
    sched: Any = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    svm: SvmConfig = field(default_factory=SvmConfig)
    experiment_name: str = "default"
    seed: int = 0
    cv: CvConfig = field(default_factory=CvConfig)
    two_level: TwoLevelConfig = field(default_factory=TwoLevelConfig)


def register_configs() -> None:
    """Register the schema and one ``model/<name>`` node per registered model."""
    from bench.models import list_models  # models are layer 1; config composes them

    cs = ConfigStore.instance()
    cs.store(name="bench_schema", node=BenchConfig)
    for name in list_models():
        cs.store(group="model", name=name, node=ModelConfig(name=name))


# Absolute: Hydra resolves a relative config path as a Python package when called from one.
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def compose_config(overrides=(), *, return_hydra_config: bool = False):
    """``conf/config.yaml`` composed with ``overrides``, as ``bench-train`` would see it.

    Outside a Hydra app this opens the config directory for the call; inside one (a run
    of ``bench-train``) Hydra is already set up on the same directory and is reused.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    if GlobalHydra.instance().is_initialized():
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=return_hydra_config)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=return_hydra_config)
