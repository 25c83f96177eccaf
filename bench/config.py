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
from typing import Any, List, Optional

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


@dataclass
class ModelConfig:
    name: str = "resnet18"
    pretrained: bool = True  # ImageNet weights, as in the published protocol
    weights: Optional[str] = None  # a local checkpoint or state dict to start from


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


@dataclass
class PathsConfig:
    results_dir: str = "results"
    # Generated datasets and decoded-image stores; shared across experiments.
    cache_dir: str = "${oc.env:BENCH_CACHE_DIR,.cache/bench}"


@dataclass
class BenchConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: Any = None
    sched: Any = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    experiment_name: str = "default"
    seed: int = 0


def register_configs() -> None:
    """Register the schema and one ``model/<name>`` node per registered model."""
    from bench.models import list_models  # models are layer 1; config composes them

    cs = ConfigStore.instance()
    cs.store(name="bench_schema", node=BenchConfig)
    for name in list_models():
        cs.store(group="model", name=name, node=ModelConfig(name=name))
