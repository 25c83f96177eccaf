"""The preflight's checks of the models: each one's task, input sizes, options and ImageNet weights
(cached, or their host reachable)."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

from bench.config import DETECTION_KINDS
from bench.preflight.report import Plan, Report


def _check_detector_options(name: str, cfg, report: Report) -> None:
    """Every model.detector_kwargs entry a detector of the sweep would get is one it takes."""
    from bench.models.detection_zoo import DETECTORS, detector_options_problem

    problem = detector_options_problem(name, cfg.model.get("detector_kwargs")) if name in DETECTORS else None
    if problem:
        report.problems.append(problem)


def _image_sizes(configs) -> list:
    """Every distinct data.image_size of the sweep (None: each model's own), first run's first."""
    return list(dict.fromkeys(c.data.image_size for c in configs))


def _valid_size(size) -> bool:
    """A data.image_size the size checks can use (bad ones are named by validate_config)."""
    from bench.config import MAX_IMAGE_SIZE

    return size is None or (isinstance(size, int) and not isinstance(size, bool) and 8 <= size <= MAX_IMAGE_SIZE)


def check_models(plan: Plan, report: Report, configs=None) -> None:
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
    frozen = frozen_random_backbone(cfg.model)
    if frozen:
        report.problems.append(frozen)


def frozen_random_backbone(model_cfg) -> str | None:
    """A problem when layers are frozen at their random initialisation: no ImageNet weights and no
    model.weights, with model.freeze_backbone (or only the last blocks trainable). The head would
    learn from random features, a number that means nothing."""
    if model_cfg.pretrained or model_cfg.get("weights"):
        return None
    frozen = [f"model.{k}={str(v).lower() if isinstance(v, bool) else v}"
              for k in ("freeze_backbone", "trainable_blocks", "trainable_conv_blocks")
              if (v := model_cfg.get(k)) not in (None, False)]
    if not frozen:
        return None
    return (f"{' and '.join(frozen)} with model.pretrained=false and no model.weights: the frozen layers would keep "
            "their random initialisation and the rest would learn from random features. Fix: model.pretrained=true "
            "(ImageNet weights), model.weights=PATH (a checkpoint to start from; for experiment=cheuque2022_two_level "
            "converted Keras ImageNet weights of MobileNet v1 x0.5, which PyTorch does not have), or "
            "model.freeze_backbone=false model.trainable_blocks=null model.trainable_conv_blocks=null to train every "
            "layer from scratch (a recorded departure where the paper froze them).")


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

