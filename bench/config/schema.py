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
from typing import Any, Dict, List, Optional

# What each key is (a result or not, a departure from a recipe or not) is marked where it is defined.
from bench.config.keys import added_later, another_command, not_a_departure, not_a_result
from bench.metrics import SELECT_BY as _SELECT_BY_RULES

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
    # Stain / colour jitter (off in the paper's protocol), torchvision's ColorJitter ranges:
    # brightness, contrast and saturation factors uniform in [max(0, 1 - v), 1 + v], hue shift
    # uniform in [-hue, hue] (hue <= 0.5). Per image, batched on the device like the flips.
    brightness: float = added_later(0.0)
    contrast: float = added_later(0.0)
    saturation: float = added_later(0.0)
    hue: float = added_later(0.0)
    # Stain jitter in HED space (Tellez et al. 2018, scikit-image's colour deconvolution): haematoxylin,
    # eosin and DAB densities each scaled by U(1 - hed, 1 + hed) and shifted by U(-hed, hed), per image.
    hed: float = added_later(0.0)


# The options that say which generated or downloaded data a run reads: like data.root, the data, not
# the method (a recipe on other data declares it; data.kind itself is compared).
_WHICH_DATA = "which data (as data.root is for a folder); data.kind is compared"


@dataclass
class DataConfig:
    kind: str = "synthetic"  # synthetic | imagefolder | bloodmnist; detection: coco | voc | boxes_csv | synthetic_smear
    root: Optional[str] = not_a_departure(  # imagefolder / bloodmnist folder
        None, why="which files: a path does not say which dataset it holds (an experiment whose paper used "
                  "other data declares that in recipe.departures)")
    image_size: Optional[int] = None  # null: the model's own input size (224; 299 for inception_v3)
    split_seed: int = not_a_departure(  # fixed across model seeds so every run sees the same split
        42, why="any seed draws a split of the recipe's kind; the papers do not publish theirs")
    # Per-class split counts: round (shares rounded) | ceil (scikit-learn's train_test_split per
    # class: test = ceil(0.12 n), then validation out of the rest; the paper's 147 basophils, ...)
    split_rounding: str = added_later("round")
    # How an image becomes image_size x image_size: resize (the whole image) | resize_crop (the
    # shorter side to image_size / crop_fraction, then the centre: torchvision's Resize(256) +
    # CenterCrop(224), the ImageNet protocol)
    geometry: str = added_later("resize")
    crop_fraction: float = added_later(0.875)
    # Stain normalisation of every image (training and evaluation): none | macenko | reinhard, to a
    # target fitted on training images only (bench/data/stain.py, torchstain's methods).
    stain: str = added_later("none")
    # Stratified train / validation / test fractions (the paper's 64/24/12).
    split_fractions: List[float] = field(default_factory=lambda: [0.64, 0.24, 0.12])
    mean: List[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: List[float] = field(default_factory=lambda: list(IMAGENET_STD))
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # synthetic dataset: images per class, native size in pixels, generator seed
    synthetic_n_per_class: int = not_a_departure(200, why=_WHICH_DATA)
    synthetic_size: int = not_a_departure(96, why=_WHICH_DATA)
    synthetic_seed: int = not_a_departure(0, why=_WHICH_DATA)
    # bloodmnist: which official resolution file (28, 64, 128, 224); download when missing
    bloodmnist_size: int = not_a_departure(64, why=_WHICH_DATA)
    download: bool = not_a_departure(False, why="whether a missing file is fetched, not what is computed")
    decode_workers: int = not_a_result(0)  # processes decoding images into the store; 0 = one per CPU core
    # Where training reads the decoded images: memory | mmap (from the store file, batch by batch,
    # for datasets that do not fit in memory) | auto (mmap only when memory would not suffice).
    store: str = not_a_result("auto")
    # --- Cross-validation splits (bench/protocols/cv.py sets these per fold; see split.py).
    # holdout: the one split above (manifest.csv). kfold: stratified fold ``fold`` of ``n_folds`` is
    # the test set, validation is carved from the other folds in the train:val ratio of
    # split_fractions. montecarlo: split_fractions drawn afresh for repetition ``fold``.
    # leave_one_source_out (data=multi_source): every image of data.test_source is the test set, validation
    # is carved per class from the other sources in the train:val ratio of split_fractions.
    split_mode: str = "holdout"  # holdout | kfold | montecarlo | leave_one_source_out
    n_folds: Optional[int] = None  # kfold: number of folds
    fold: Optional[int] = not_a_departure(  # kfold: the test fold; montecarlo: the repetition (0-based)
        None, why="which fold or repetition of the recipe's cross-validation: each one is the recipe")
    # --- data=multi_source (bench/data/sources.py): several labs' class folders, {NAME: PATH}; per source a
    # preset name of bench/conf/external or a {FOLDER: CLASS} map; the source held out by leave_one_source_out.
    # Typed Any, not Dict: a {...} override merges into a map, and OmegaConf cannot merge one into a null map
    # (checked in bench/config/checks.py instead).
    sources: Any = added_later(None, not_a_departure="which files: the labs' folders, as data.root")
    source_maps: Any = added_later(None)
    test_source: Optional[str] = added_later(None)
    # --- Class selection, applied after the split (two-level classifier, transfer to subsets).
    classes: Optional[List[str]] = None  # keep only these classes; the others are excluded (counted)
    # class_map, label_map: maps, typed Any so that a {...} override works on a null one (checks.py checks the type)
    class_map: Any = None  # rename classes, e.g. to group labels (merges classes)
    # --- Detection (bench/detection/): boxes on smear fields.
    annotations: Optional[str] = added_later(  # coco: the JSON; boxes_csv: the CSV (default under data.root)
        None, not_a_departure="which annotation file: a path, as data.root")
    label_map: Any = added_later(None)  # rename / merge box labels, e.g. {neutrophil: wbc}
    coordinates: str = added_later(  # boxes_csv: pixel | fraction | auto (decided from the values, logged)
        "auto", not_a_departure="how the file writes its boxes: a fact about the file, not a choice of method")
    smear_n_fields: int = added_later(120, not_a_departure=_WHICH_DATA)  # synthetic_smear: fields, side in pixels
    smear_size: int = added_later(256, not_a_departure=_WHICH_DATA)
    scale_jitter: Optional[List[float]] = added_later(None)  # detection training: zoom by a factor in [lo, hi], boxes with it


@dataclass
class ModelConfig:
    name: str = "resnet18"
    pretrained: bool = True  # ImageNet weights, as in the published protocol
    # Which ImageNet weights: null = the latest (torchvision's DEFAULT, e.g. IMAGENET1K_V2 for
    # resnet50); IMAGENET1K_V1 = torchvision's original ones (what papers of 2019-2021 used);
    # for timm models a pretrained tag (e.g. a1_in1k).
    weights_tag: Optional[str] = added_later(None)
    weights: Optional[str] = None  # a local checkpoint or state dict to start from
    # Head and freezing (bench.models.heads): hidden widths of an MLP head replacing the
    # family's head ([] = the family's own head, as built by the registry), dropout after
    # each hidden layer, freeze everything but the head, or train only the last N blocks
    # (per-family definition of a block in bench/models/heads.py; null = all trainable).
    # Detectors only: keyword arguments of the torchvision constructor (e.g. box_batch_size_per_image,
    # rpn_post_nms_top_n_train: fewer sampled boxes make a CPU step several times cheaper).
    detector_kwargs: Dict[str, Any] = added_later(default_factory=dict)
    # Detectors: the most boxes a field gets (torchvision's cap, 100, is fewer than the cells of a crowded
    # smear field), also COCO's maxDets in the scoring. Left out of the identity at 300, deliberately: the
    # cap acts only when a detector predicts, never on training, so a detector trained before this option
    # holds the weights it would hold now and is not retrained. Its metrics.json was scored at 100 boxes
    # per field, though (it has no max_detections entry, and the chain says so): exact where fields kept
    # fewer boxes, cut short on crowded ones; delete that metrics.json and rerun the command to score it
    # at the cap (it resumes from last.pt and trains no epoch).
    max_detections: int = added_later(300)
    head_hidden: List[int] = field(default_factory=list)
    head_dropout: float = 0.0
    # Where the new head reads from: keep only the first N of the family's fully connected layers
    # before its head (VGG/AlexNet: fc6, fc7; 0 = the flattened conv features, VGG's 7x7x512);
    # null keeps them all. Acevedo 2019's VGG16: 1 (fc6 4096 -> 1024 -> classes).
    head_keep_fc: Optional[int] = added_later(None)
    freeze_backbone: bool = False
    trainable_blocks: Optional[int] = None
    # Or count only the blocks holding a convolution ("the last four convolutional blocks"): the
    # last N of them train, with everything after them (VGG's fc6/fc7) and the head.
    trainable_conv_blocks: Optional[int] = added_later(None)


@dataclass
class TrainerConfig:
    epochs: int = 25
    batch_size: int = 32
    eval_batch_size: int = not_a_departure(  # evaluation has no gradients; a larger batch is just faster
        128, why="evaluation runs without gradients and BatchNorm on its running statistics: the batch "
                 "size changes no prediction")
    device: str = not_a_departure(  # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:1 | mps
        "auto", why="where it runs; the precision it trained in is compared as precision=...")
    amp: Optional[bool] = not_a_departure(  # bf16 autocast; null = on for CUDA, timed trial on a bf16 CPU (bench.training.precision)
        None, why="compared as the precision the run trained in (amp=null leaves it to the device): "
                  "precision=bf16 (paper: fp32)")
    channels_last: Optional[bool] = not_a_departure(  # null = on for CUDA and CPU, off elsewhere (bench.training.precision)
        None, why="a memory layout: the same computation")
    compile: bool = not_a_departure(False, why="the same computation, compiled")  # torch.compile the model
    num_threads: Optional[int] = not_a_result(None)  # CPU threads for torch; null = torch's default
    grad_accum: int = 1  # micro-batches per optimizer step (effective batch = batch_size)
    label_smoothing: float = 0.0
    progress: bool = not_a_result(True)  # tqdm bars
    max_batches: Optional[int] = None  # cap batches per epoch (smoke tests only)
    # Write last.pt (and a new best.pt) after an epoch only when this many seconds have passed
    # since the previous write, and after the last epoch: a 1 GB VGG checkpoint per 8 s GPU
    # epoch would cost a quarter of the time. A kill loses at most this much training. 0 = every epoch.
    checkpoint_every_s: float = not_a_result(60.0)
    # The validation number that picks the best epoch and ranks the leaderboard:
    # val_acc (the paper's) | val_balanced_acc | val_macro_f1 (both fairer on imbalanced classes).
    select_by: str = added_later("val_acc")
    # Loss weights per class: null (plain cross-entropy, the paper) | balanced (n / (C x n_c) on the
    # training split, scikit-learn's rule), so a rare class counts as much as a common one.
    class_weights: Optional[str] = added_later(None)
    # When the learning-rate schedule steps: epoch (torch's convention, the paper's StepLR) | step
    # (after every optimizer step: Keras' per-iteration decay, sched=inverse_time)
    sched_interval: str = added_later("epoch")
    # Detectors: the learning rate ramps up linearly over the first N optimizer steps (torchvision's
    # detection recipe); from scratch without it RetinaNet's loss can turn NaN in the first epoch.
    warmup_steps: int = added_later(0)
    # Training order: shuffle (every image once per epoch, the paper) | balanced (each class drawn
    # equally often, images drawn with replacement; same number of images per epoch).
    sampler: str = added_later("shuffle")
    # Every class reaches N training images per epoch (Acevedo 2019: 4,096): a class with fewer
    # gets N - n extra draws of its own images, each augmented afresh (data.augment); larger classes
    # are kept whole. null: each image once per epoch.
    balance_to: Optional[int] = added_later(None)


@dataclass
class RecipeConfig:
    """Which published recipe a run is measured against (bench/config/recipe.py). ``experiment``: the
    experiment file that is the recipe (null: gavas2021, whose Table 2 the leaderboard compares
    with); ``departures``: what this harness always does differently from that paper (written in
    the experiment file next to the reason), recorded in every run's protocol column."""

    experiment: Optional[str] = added_later(None)
    paper: Optional[str] = added_later(None)
    departures: List[str] = added_later(default_factory=list)
    # The models the paper ran, for "model=X (paper: A, B)" (null: the experiment's sweep list,
    # hydra.sweeper.params model or model.name, else the model the experiment composes).
    models: Optional[List[str]] = added_later(None)


@dataclass
class LoggerConfig:
    """An experiment tracker beside the run folder (bench/training/loggers.py): none | csv | tensorboard | mlflow."""

    kind: str = "none"
    dir: Optional[str] = None  # csv / tensorboard: default <results_dir>/<experiment>/logs
    tracking_uri: Optional[str] = None  # mlflow: default the local file store <results_dir>/mlruns


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
    fold: Optional[int] = not_a_departure(  # run only this fold / repetition (e.g. one per job); null = all
        None, why="which of the recipe's folds this command runs")


@dataclass
class TwoLevelConfig:
    """Two-level classifier (bench/protocols/two_level.py): level 1 tells the groups apart,
    level 2 has one classifier per group for its classes. Classes outside every group are excluded."""

    enabled: bool = False
    groups: Dict[str, List[str]] = field(default_factory=_paper_groups)


@dataclass
class SvmConfig:
    """SVMs on frozen-CNN features (``bench-svm``, bench/protocols/svm_features.py)."""

    feature_models: List[str] = not_a_departure(
        default_factory=lambda: ["vgg16", "inception_v3"],
        why="which runs there are: each run's extractor is compared as its model (recipe.models)")
    kernels: List[str] = field(default_factory=lambda: ["rbf", "cubic"])  # rbf | linear | cubic | poly<d>
    cv_folds: int = 5  # stratified k-fold on the training split selects C (and gamma)
    c_grid: List[float] = field(default_factory=lambda: [0.1, 1.0, 10.0, 100.0])
    gamma_grid: List[Any] = field(default_factory=lambda: ["scale"])  # "scale", "auto" or numbers
    coef0: float = 1.0  # polynomial kernels: (gamma <x, y> + coef0)^degree
    standardize: bool = True  # z-score features (fitted inside each CV fold)
    probability: bool = False  # Platt-scaled probabilities; false: softmax of the decision function
    balance_to: Optional[int] = None  # augment minority classes up to N training images (Acevedo 2019: 4,608 per class for the SVM)
    n_jobs: int = not_a_result(1)  # parallel CV fits


@dataclass
class ReferralConfig:
    """Referral (bench.metrics.calibration): cells whose confidence is below a threshold go to a person.
    The threshold is the lowest at which the validation cells kept reach this accuracy; the report
    gives the share referred and the accuracy on the rest, on test and every external set."""

    target_acc: float = 0.99


@dataclass
class TuneConfig:
    """``bench-tune`` (bench/tune/): one Optuna study per architecture, every trial a normal run folder."""

    # KEY: 'log(lo, hi)' | 'uniform(lo, hi)' | 'int(lo, hi)' | [choice, ...], e.g.
    # tune.space="{optim.lr: 'log(1e-4, 1e-1)', optim.momentum: [0.8, 0.9, 0.95]}". Typed Any: a {...}
    # override cannot merge into a null map (checked by bench.tune.space).
    space: Any = None
    trials: int = 20  # per architecture, across all workers (completed and pruned trials count)
    workers: int = 1  # local processes asking the study for trials at once
    seed: int = 0  # the TPE sampler's seed (worker k uses seed + k)
    pruner: str = "median"  # median | halving | none: stop a trial whose validation number lags
    startup_trials: int = 3  # trials run whole before the median pruner starts comparing
    storage: Optional[str] = None  # null: a journal file in results/<experiment>/tuning/; or a database URL


@dataclass
class BenchConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: Any = None
    sched: Any = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    paths: PathsConfig = not_a_result(default_factory=PathsConfig)
    logger: LoggerConfig = not_a_result(default_factory=LoggerConfig)
    recipe: RecipeConfig = not_a_departure(default_factory=RecipeConfig, why="names the recipe itself")
    # cv / two_level / svm drive other commands (bench-cv, bench-svm); a training run's own data
    # selection is in data.* (fold, classes, class_map), which stays in the hash.
    svm: SvmConfig = another_command(default_factory=SvmConfig, command="bench-svm")
    experiment_name: str = not_a_departure("default", why="a folder name")
    seed: int = not_a_departure(0, why="any seed is one draw of the recipe; the papers do not publish theirs")
    # Chosen on a finished run's validation predictions: it changes no trained weight or metric.
    referral: ReferralConfig = not_a_result(default_factory=ReferralConfig)
    cv: CvConfig = another_command(default_factory=CvConfig, command="bench-cv")
    two_level: TwoLevelConfig = another_command(default_factory=TwoLevelConfig, command="bench-cv")
    tune: TuneConfig = another_command(default_factory=TuneConfig, command="bench-tune")


# --------------------------------------------------------------------------- the choices
# The choices of the string options, defined once; the modules that act on them, and the one
# validation pass (bench.config.checks), import these.
DATA_KINDS = ("synthetic", "imagefolder", "bloodmnist", "multi_source")
DETECTION_KINDS = ("coco", "voc", "boxes_csv", "synthetic_smear")
SPLIT_MODES = ("holdout", "kfold", "montecarlo", "leave_one_source_out")
STORE_MODES = ("auto", "memory", "mmap")
STAIN_METHODS = ("none", "macenko", "reinhard")
INTERPOLATIONS = ("nearest", "bilinear")
SELECT_BY = tuple(_SELECT_BY_RULES)  # the rules themselves are bench.metrics'
CLASS_WEIGHTS = (None, "balanced")
SAMPLERS = ("shuffle", "balanced")
LOGGERS = ("none", "csv", "tensorboard", "mlflow")
MAX_IMAGE_SIZE = 4096  # a side beyond this is a typo (PBC's images are 360 px)


