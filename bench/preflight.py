"""Before the first model trains: what will run, and can it run? Also ``bench-fetch-weights``.

A sweep that dies at model 14 because a weight file is missing, or at hour six
because the disk filled up, wastes the night. ``preflight`` checks everything it can
in seconds and reports every problem at once.

``plan_runs`` expands the command line the way Hydra's sweeper will (model and seed
lists on the command line, or the experiment's ``hydra.sweeper.params``), so the
checks cover exactly the runs that will start.
"""

from __future__ import annotations

import logging
import math
import shutil
import socket
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from bench.config import DETECTION_KINDS, compose_config

log = logging.getLogger(__name__)

MULTIRUN_FLAGS = ("-m", "--multirun")
# A finished run keeps best.pt (fp32 weights) and last.pt (weights + SGD momentum): 12 bytes per
# parameter. While last.pt and best.pt are rewritten, old and new copies exist together: another
# 12 bytes per parameter, for one model at a time (the largest counts).
BYTES_PER_PARAM_KEPT = 3 * 4
BYTES_PER_PARAM_REWRITE = 3 * 4
SPLIT_KEYS = ("data.split_seed", "data.split_fractions", "data.split_mode", "data.split_rounding")


@dataclass
class Plan:
    cfg: DictConfig  # the config of the first run (lists collapsed to their first value)
    models: list[str]
    seeds: list[int]
    multirun: bool
    swept: dict[str, list[str]] = field(default_factory=dict)  # every swept key and its values
    overrides: list[str] = field(default_factory=list)  # the command line's overrides as given
    # The other values of swept keys (not model / seed, which the checks go through by name): each as
    # ("key=value", the overrides of the first run with that one value changed), composed and checked
    # by the preflight, so a bad value fails before the first run and not when its own run starts.
    variants: list[tuple[str, list[str]]] = field(default_factory=list)

    @property
    def n_runs(self) -> int:
        """Every combination Hydra's sweeper will start (models x seeds x any other swept key)."""
        return math.prod(len(v) for v in self.swept.values()) if self.multirun else 1


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        lines = [f"  ok: {n}" for n in self.notes]
        lines += [f"  WARNING: {w}" for w in self.warnings]
        lines += [f"  PROBLEM: {p}" for p in self.problems]
        return "\n".join(lines)


# --------------------------------------------------------------------------- planning
def _sweep_values(parser: OverridesParser, key: str, text: str) -> list[str]:
    override = parser.parse_overrides([f"{key}={text}"])[0]
    if override.is_sweep_override():
        return [str(v) for v in override.sweep_string_iterator()]
    return [str(override.value())]


def plan_runs(args: list[str]) -> Plan:
    """Compose the config for ``args`` (a bench-train command line) and list its runs."""
    multirun = any(a in MULTIRUN_FLAGS for a in args)
    parser = OverridesParser.create()
    overrides = parser.parse_overrides([a for a in args if a not in MULTIRUN_FLAGS])
    base, swept, elements = [], {}, {}
    for o in overrides:
        key = o.key_or_group
        if o.is_sweep_override():
            values = [str(v) for v in o.sweep_string_iterator()]
            swept[key], elements[key] = values, o.get_key_element()
            base.append((key, f"{o.get_key_element()}={values[0]}"))
        else:
            base.append((key, o.input_line))
    cfg = compose_config([line for _, line in base], return_hydra_config=True)
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    if multirun:
        for key, text in params.items():
            swept.setdefault(key, _sweep_values(parser, key, str(text)))
    models = swept.get("model") or swept.get("model.name") or [cfg.model.name]
    seeds = [int(s) for s in swept.get("seed", [cfg.seed])]
    return Plan(cfg=cfg, models=models, seeds=seeds, multirun=multirun, swept=swept,
                overrides=[a for a in args if a not in MULTIRUN_FLAGS],
                variants=_variants(base, swept, elements) if multirun else [])


RUN_KEYS = ("model", "model.name", "seed")  # swept keys the checks go through value by value already


def _variants(base: list[tuple[str, str]], swept: dict[str, list[str]], elements: dict[str, str]):
    """("key=value", overrides) for every value of a swept key that the first run's config lacks:
    the command line's other values, and every value of an experiment file's sweeper params (which
    the first run's config does not hold)."""
    variants = []
    for key, values in swept.items():
        if key in RUN_KEYS:
            continue
        element = elements.get(key, key)
        rest = [line for k, line in base if k != key]
        for value in values[1:] if key in elements else values:
            variants.append((f"{element}={value}", [*rest, f"{element}={value}"]))
    return variants


# --------------------------------------------------------------------------- checks
def preflight(plan: Plan) -> Report:
    """Check data, weights, image sizes, disk and device for every planned run."""
    from bench.config import validate_config

    report = Report()
    cfg = plan.cfg
    report.problems.extend(validate_config(cfg))
    configs = [cfg, *_check_variants(plan, report)]
    from bench.loggers import missing_package

    if missing_package(cfg.logger.kind):
        report.problems.append(missing_package(cfg.logger.kind))
    n_images = _check_data(cfg, report)
    _check_split_sweep(plan, report)
    _check_models(plan, report, configs)
    _check_disk(plan, report)
    _check_memory(plan, report, n_images, configs)
    _check_device(cfg, report)
    return report


def _check_variants(plan: Plan, report: Report) -> list[DictConfig]:
    """Compose and validate every other value of the swept keys; returns the configs that compose
    (their image sizes are checked against the models, memory and disk with the first run's).
    A problem the first run's config has too is not repeated."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from bench.config import validate_config

    configs = []
    for override, overrides in plan.variants:
        try:
            variant = compose_config(overrides, return_hydra_config=True)
        except (HydraException, OmegaConfBaseException) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            report.problems.append(f"the swept value {override} does not compose ({first_line}); fix or drop "
                                   "that value.")
            continue
        configs.append(variant)
        key = override.split("=", 1)[0].lstrip("+~")
        for problem in validate_config(variant):
            if problem in report.problems:
                continue
            # A problem of another option that this value brings about (grad_accum > a swept batch_size).
            report.problems.append(problem if problem.startswith(f"{key}=") else f"{problem} (with {override})")
    return configs


def _check_data(cfg, report: Report) -> int | None:
    """Problems with the data; returns the number of images when it is known cheaply."""
    from bench.data.imagefolder import DataError, scan_imagefolder

    kind = cfg.data.kind
    n_images = None
    if kind == "synthetic":
        from bench.data.synthetic import CLASS_NAMES

        n_images = cfg.data.synthetic_n_per_class * len(CLASS_NAMES)
    try:
        if kind == "imagefolder":
            if not cfg.data.root or cfg.data.root == "???":
                raise DataError("data=imagefolder needs data.root=PATH (a folder with one sub-folder per class)")
            records, classes = scan_imagefolder(cfg.data.root)
            n_images = len(records)
            report.notes.append(f"data: {n_images} images in {len(classes)} classes under {cfg.data.root}")
            _check_classes(cfg, records, classes, report)
            _check_manifest(cfg, records, report)
        elif kind == "bloodmnist":
            from bench.data.bloodmnist import bloodmnist_file

            path = bloodmnist_file(cfg.data.root, cfg.data.bloodmnist_size)
            if not path.exists() and not cfg.data.download:
                raise DataError(f"{path} does not exist; set data.root=... to its folder or data.download=true")
            report.notes.append(f"data: {path}")
        elif kind in DETECTION_KINDS and kind != "synthetic_smear":
            from bench.detection.data import read_detection_set

            dset = read_detection_set(cfg.data)
            counts = dset.class_counts()
            report.notes.append(f"data: {len(dset.images)} images, boxes: " +
                                ", ".join(f"{c} {counts[c]}" for c in dset.classes))
            report.warnings.extend(f"annotations: {line}" for line in dset.report.lines() if "coordinates" not in line)
        else:
            report.notes.append(f"data: {kind}")
    except (DataError, ValueError, OSError) as exc:
        report.problems.append(str(exc))
    _check_augment(cfg, report)
    return n_images


# A class with fewer images than this gives validation / test shares of one or two images:
# its per-class numbers are noise, and a sweep ranked on them is too.
MIN_CLASS_IMAGES = 10


def _check_classes(cfg, records, classes, report: Report) -> None:
    """Per-class counts (printed), too-small classes (warned, by name) and class folders with no
    image files (named: they are not classes of this run)."""
    from collections import Counter

    from bench.data.imagefolder import class_folders_without_images
    from bench.data.split import split_counts

    counts = Counter(r.label for r in records)
    report.notes.append("classes: " + ", ".join(f"{c} {counts[c]}" for c in classes))
    fractions = list(cfg.data.split_fractions)
    for c in classes:
        n = counts[c]
        if n < 3:
            report.problems.append(
                f"class {c!r} has {n} image(s): a class needs at least 3 to reach train, validation and test. "
                "Add images, merge it into another class (data.class_map) or leave it out (data.classes=[...]).")
        elif n < MIN_CLASS_IMAGES and len(fractions) == 3:
            n_train, n_val, n_test = split_counts(n, fractions)
            report.warnings.append(
                f"class {c!r} has only {n} images ({n_train} train / {n_val} validation / {n_test} test): its "
                f"per-class numbers rest on {n_val} and {n_test} image(s) and say little. Add images, merge it "
                "(data.class_map) or leave it out (data.classes=[...]); trainer.class_weights=balanced helps it "
                "count in training.")
    empty = class_folders_without_images(cfg.data.root)
    if empty:
        report.warnings.append(
            f"folder(s) {', '.join(repr(e) for e in empty)} under {cfg.data.root} hold no image files and are "
            "not classes of this run; put the images there, or move the folder out of data.root.")


def _check_manifest(cfg, records, report: Report) -> None:
    """An experiment's existing split must fit this data and these split settings; found here,
    before any run folder is touched (a mismatch found later would have set runs aside first)."""
    from bench import runs
    from bench.data.imagefolder import DataError
    from bench.data.split import check_split_settings, split_settings

    if cfg.data.split_mode != "holdout":
        return  # cross-validation folds are checked by each fold's run
    path = runs.experiment_dir(cfg.paths.results_dir, cfg.experiment_name) / "manifest.csv"
    if not path.is_file():
        return
    try:
        settings = split_settings(seed=cfg.data.split_seed, fractions=cfg.data.split_fractions,
                                  rounding=cfg.data.get("split_rounding") or "round")
        check_split_settings(path, settings, record_missing=False)
    except DataError as exc:
        report.problems.append(str(exc))
    import pandas as pd

    try:
        manifest = pd.read_csv(path, dtype=str, keep_default_na=False)
        old = set(zip(manifest["path"], manifest["label"]))
    except (OSError, ValueError, KeyError) as exc:
        report.problems.append(f"cannot read the experiment's split manifest {path} ({exc}); delete it to re-split.")
        return
    new = {(r.path, r.label) for r in records}
    # Files of the split that are gone or relabelled, or files it never saw: not the experiment's data.
    # Files left out of the split because they did not decode are listed in the runs' excluded.csv.
    excluded = set()
    for excluded_csv in path.parent.glob("runs/*/seed*/excluded.csv"):
        try:
            excluded |= set(pd.read_csv(excluded_csv, dtype=str, keep_default_na=False)["path"])
        except (OSError, ValueError, KeyError):
            continue
    missing = old - new
    added = {(p, label) for p, label in new - old if p not in excluded}
    if missing or added:
        examples = ", ".join(p for p, _ in sorted(missing | added)[:3])
        report.problems.append(
            f"data.root={cfg.data.root} does not match the split of experiment {cfg.experiment_name!r} "
            f"({path}: {len(missing)} file(s) of the split are missing or relabelled, {len(added)} are new; e.g. "
            f"{examples}). Nothing was moved. Another dataset is another experiment: add experiment_name=<name>.")


def _check_split_sweep(plan: Plan, report: Report) -> None:
    """A sweep over split settings into one experiment would run every value on the first split:
    each swept split key must be in experiment_name (``${data.split_seed}`` for data.split_seed; an
    interpolation of another key does not tell its values apart)."""
    names = _experiment_name_texts(plan)
    for key in SPLIT_KEYS:
        values = plan.swept.get(key, [])
        if len(values) < 2 or all(f"${{{key}}}" in name for name in names):
            continue
        report.problems.append(
            f"{key} is swept ({', '.join(values)}) but every value would share experiment "
            f"{plan.cfg.experiment_name!r} and so one split (an experiment has one). Give each split its own "
            f"experiment: add 'experiment_name={plan.cfg.experiment_name}_split${{{key}}}'.")


def _experiment_name_texts(plan: Plan) -> list[str]:
    """experiment_name as written (interpolations unresolved): the composed config's (command line or
    experiment file) and every swept value of it."""
    node = plan.cfg._get_node("experiment_name")
    texts = [str(node._value())] if node is not None else []
    return texts + list(plan.swept.get("experiment_name", []))


def _check_augment(cfg, report: Report) -> None:
    from bench.data.transforms import BatchAugment

    aug = cfg.data.augment
    try:
        BatchAugment(aug.hflip, aug.vflip, aug.rotation, aug.interpolation)
    except ValueError as exc:
        report.problems.append(str(exc))


def _check_detector_options(name: str, cfg, report: Report) -> None:
    """Every model.detector_kwargs entry a detector of the sweep would get is one it takes."""
    from bench.models.detection_zoo import DETECTORS, detector_options_problem

    problem = detector_options_problem(name, cfg.model.get("detector_kwargs")) if name in DETECTORS else None
    if problem:
        report.problems.append(problem)


def _image_sizes(configs) -> list:
    """Every distinct data.image_size of the sweep (None: each model's own), first run's first."""
    return list(dict.fromkeys(c.data.image_size for c in configs))


def _check_models(plan: Plan, report: Report, configs=None) -> None:
    from bench.models import UnknownModelError, get_model_spec

    cfg = plan.cfg
    image_sizes = _image_sizes(configs or [cfg])
    missing: list[tuple[str, Path | None]] = []
    for name in plan.models:
        try:
            spec = get_model_spec(name)
        except UnknownModelError as exc:
            report.problems.append(str(exc))
            continue
        detection_data = cfg.data.kind in DETECTION_KINDS
        if detection_data != (spec.task == "detection"):
            report.problems.append(
                f"{name} is a {spec.task} model but data={cfg.data.kind} holds "
                f"{'boxes on fields' if detection_data else 'one cell per image'}: choose a "
                f"{'detector' if detection_data else 'classifier'} (bench-models lists each model's task) or "
                f"{'a classification dataset' if detection_data else 'a detection dataset'}.")
            continue
        if spec.task == "detection":
            _check_detector_options(name, cfg, report)
        for size in dict.fromkeys(spec.image_size(s) for s in image_sizes if _valid_size(s)):
            if size < spec.min_train_size:
                report.problems.append(
                    f"{name}: data.image_size={size} is below its minimum training input of "
                    f"{spec.min_train_size} px (leave data.image_size null for its own {spec.input_size} px)."
                )
        if cfg.model.pretrained and not cfg.model.weights:
            tag = cfg.model.get("weights_tag")
            if spec.source == "custom":
                report.problems.append(f"{name} has no pretrained weights; set model.pretrained=false.")
                continue
            try:
                available = _weights_available(name, spec, tag)
            except ValueError as exc:  # a weights tag this model does not have
                report.problems.append(f"{name}: {exc}")
                continue
            if not available:
                missing.append((name, _cache_file(name, tag)))
    if missing:
        files = ", ".join(f"{n} ({p.name if p else 'Hugging Face cache'})" for n, p in missing)
        folder = next((p.parent for _, p in missing if p), None)
        report.problems.append(
            f"ImageNet weights for {len(missing)} model(s) are neither cached nor downloadable from here: "
            f"{files}. Fix: run `bench-fetch-weights` with the same overrides on a machine with network "
            f"access{f' and copy the files into {folder}' if folder else ''} (the torch hub cache; "
            f"TORCH_HOME moves it), or train from scratch with model.pretrained=false."
        )
    if cfg.model.weights and not Path(cfg.model.weights).expanduser().is_file():
        report.problems.append(f"model.weights={cfg.model.weights!r} is not a file.")


def _cache_file(name: str, tag: str | None = None) -> Path | None:
    from bench.models.weights import weights_cache_path

    return None if name.startswith("timm/") else weights_cache_path(name, tag)


def _weights_available(name: str, spec, tag: str | None = None) -> bool:
    """True if the ImageNet weights (``tag``; None = the latest) are cached, or their host answers
    so they can be downloaded. An unknown tag raises ValueError naming the ones there are."""
    if spec.source == "timm":
        return _timm_cached(name, tag) or _reachable("https://huggingface.co")
    from bench.models.weights import torchvision_weights

    weights = torchvision_weights(name, tag)
    path = _cache_file(name, tag)
    if path is None or path.is_file():
        return True
    return weights is not None and _reachable(weights.url)


def _timm_cached(name: str, tag: str | None = None) -> bool:
    try:
        import timm
        from huggingface_hub import try_to_load_from_cache

        base = name.split("/", 1)[1]
        pcfg = timm.models.get_pretrained_cfg(f"{base}.{tag}" if tag else base)
        repo = getattr(pcfg, "hf_hub_id", None) if pcfg else None
        if not repo:
            return False
        return any(
            isinstance(try_to_load_from_cache(repo, f), str)
            for f in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
        )
    except Exception:
        return False


_REACHABLE: dict[str, bool] = {}


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a HEAD request to the URL's host answers (cached per host)."""
    host = urllib.request.urlparse(url).netloc
    if host not in _REACHABLE:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            _REACHABLE[host] = True
        except (OSError, socket.timeout, ValueError):
            _REACHABLE[host] = False
    return _REACHABLE[host]


def _check_disk(plan: Plan, report: Report) -> None:
    from bench.models import get_model_spec

    cfg = plan.cfg
    results = Path(cfg.paths.results_dir).expanduser().resolve()
    existing = next((p for p in [results, *results.parents] if p.exists()), Path("/"))
    problem = _not_writable(existing)
    if problem:
        report.problems.append(f"paths.results_dir={cfg.paths.results_dir}: {existing} is not writable ({problem}); "
                               "nothing could be saved. Point paths.results_dir at a writable folder.")
        return
    free = shutil.disk_usage(existing).free
    need, largest = 0, 0
    for name in plan.models:
        try:
            params = _param_count(name, get_model_spec(name))
        except Exception:
            continue  # reported by the model checks
        need += params * BYTES_PER_PARAM_KEPT * len(plan.seeds)
        largest = max(largest, params)
    need += largest * BYTES_PER_PARAM_REWRITE
    line = f"disk: checkpoints need about {_size(need)}, {_size(free)} free at {existing}"
    if need * 1.2 > free:
        report.problems.append(line + "; free some space or set paths.results_dir=... elsewhere.")
    else:
        report.notes.append(line)


def _not_writable(folder: Path) -> str | None:
    """Why a file cannot be created in ``folder`` (tried for real: permissions, a read-only
    mount, a full disk), or None."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return None


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.0f} MiB"


def _valid_size(size) -> bool:
    """A data.image_size the size checks can use (bad ones are named by validate_config)."""
    from bench.config import MAX_IMAGE_SIZE

    return size is None or (isinstance(size, int) and not isinstance(size, bool) and 8 <= size <= MAX_IMAGE_SIZE)


def _check_memory(plan: Plan, report: Report, n_images: int | None, configs=None) -> None:
    from bench.data.store import available_memory, check_store_mode, memory_need
    from bench.models import get_model_spec

    cfg = plan.cfg
    try:
        check_store_mode(cfg.data.store)
    except ValueError as exc:
        report.problems.append(str(exc))
        return
    sizes = []
    for name in plan.models:
        for image_size in _image_sizes(configs or [cfg]):
            try:
                if _valid_size(image_size):
                    sizes.append(get_model_spec(name).image_size(image_size))
            except Exception:
                continue  # reported by the model checks
    if not n_images or not sizes:
        return
    _check_store_disk(cfg, n_images, sorted(set(sizes)), report)
    available = available_memory()
    if available is None or cfg.data.store == "mmap":
        return
    size = max(sizes)
    need = memory_need(n_images, size)
    line = f"memory: {n_images} decoded images at {size} px need about {_size(need)}, {_size(available)} available"
    if need <= available:
        report.notes.append(line)
    elif cfg.data.store == "auto":
        report.warnings.append(line + "; training reads them from the memory-mapped store file instead "
                               "(data.store=auto), which is slower where the disk is slow.")
    else:
        report.problems.append(line + "; free memory, set data.store=auto (or mmap) to read them from the store "
                               "file, or set a smaller data.image_size.")


def _check_store_disk(cfg, n_images: int, sizes: list[int], report: Report) -> None:
    """The decoded-image store (one per input size) must fit on the cache's disk."""
    if not cfg.paths.cache_dir:
        return
    cache = Path(cfg.paths.cache_dir).expanduser().resolve()
    existing = next((p for p in [cache, *cache.parents] if p.exists()), Path("/"))
    problem = _not_writable(existing)
    if problem:
        report.problems.append(f"paths.cache_dir={cfg.paths.cache_dir}: {existing} is not writable ({problem}); "
                               "the decoded images are stored there. Point paths.cache_dir at a writable folder.")
        return
    need = sum(n_images * s * s * 3 for s in sizes)
    free = shutil.disk_usage(existing).free
    line = (f"disk: the decoded images ({n_images} at {', '.join(f'{s} px' for s in sizes)}) need about "
            f"{_size(need)}, {_size(free)} free at {existing}")
    if need * 1.1 > free:
        report.problems.append(line + "; free space, set paths.cache_dir=... on a bigger disk, or a smaller "
                                      "data.image_size.")
    else:
        report.notes.append(line)


_PARAMS: dict[str, int] = {}


def _param_count(name: str, spec) -> int:
    """Parameters of the model with an 8-class head, counted on the meta device (no memory)."""
    if name not in _PARAMS:
        import torch

        from bench.models import create_model

        with torch.device("meta"):
            model = create_model(name, num_classes=8, pretrained=False)
        _PARAMS[name] = sum(p.numel() for p in model.parameters())
    return _PARAMS[name]


def _check_device(cfg, report: Report) -> None:
    import torch

    device = cfg.trainer.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        report.problems.append(f"trainer.device={device} but no CUDA GPU is visible; use trainer.device=auto or cpu.")
    elif device == "auto" and not torch.cuda.is_available():
        report.warnings.append(
            "no CUDA GPU found: training runs on the CPU, which is fine for the demo and far too slow "
            "for the 27-model protocol at 224 px."
        )
    elif torch.cuda.is_available():
        report.notes.append(f"device: {torch.cuda.get_device_name(0)}")


# --------------------------------------------------------------------------- bench-fetch-weights
def fetch_main(argv: list[str] | None = None) -> int:
    """``bench-fetch-weights [overrides...]``: download every weight file a command would need."""
    from bench.config import register_configs
    from bench.models import get_model_spec
    from bench.models.weights import fetch_weights

    from bench.commands import parser

    args = parser("bench-fetch-weights").parse_args(argv)
    register_configs()
    names = [a for a in args.overrides if "=" not in a]
    overrides = [a for a in args.overrides if "=" in a] + ([f"model={','.join(names)}"] if names else [])
    plan = plan_runs(["-m", *overrides])
    failed = 0
    for name in plan.models:
        if get_model_spec(name).source == "custom":
            print(f"  {name}: no pretrained weights (custom model), skipped")
            continue
        try:
            path = fetch_weights(name, plan.cfg.model.get("weights_tag"))
            print(f"  {name}: {path or 'Hugging Face cache'}")
        except Exception as exc:
            failed += 1
            print(f"  {name}: FAILED ({type(exc).__name__}: {exc})", file=sys.stderr)
    print(f"{len(plan.models) - failed} of {len(plan.models)} model(s) ready.")
    return 1 if failed else 0
