"""Weights: ImageNet weights through torchvision's weights API / the torch hub cache,
and local checkpoints given with ``model.weights=PATH``.

torchvision downloads ImageNet weights with ``torch.hub.load_state_dict_from_url``
into ``$TORCH_HOME/hub/checkpoints/<file name from the URL>`` (``TORCH_HOME``
defaults to ``~/.cache/torch``). :func:`weights_cache_path` gives that path,
:func:`fetch_weights` fills it (used by ``bench-fetch-weights``), and
:func:`ensure_torchvision_weights` is what ``pretrained=True`` calls: it returns the
cached file, downloads it if possible, and otherwise raises
:class:`PretrainedWeightsUnavailable` explaining how to fix it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union
from urllib.parse import urlparse

import torch
from torch import nn

log = logging.getLogger(__name__)

_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP and torch.compile wrappers


class PretrainedWeightsUnavailable(RuntimeError):
    """Pretrained weights were requested but cannot be found or downloaded."""


# ---------------------------------------------------------------- torchvision / hub


def weights_tags(name: str) -> list[str]:
    """The ImageNet weights torchvision has for ``name`` (e.g. IMAGENET1K_V1, IMAGENET1K_V2); []."""
    import torchvision

    try:
        return [w.name for w in torchvision.models.get_model_weights(name)]
    except (ValueError, KeyError, AttributeError):
        return []


def torchvision_weights(name: str, tag: Optional[str] = None):
    """torchvision's weights enum member for ``name``: ``tag`` (``IMAGENET1K_V1``, ...), or the
    latest (``DEFAULT``) when ``tag`` is None; None when torchvision has no weights for ``name``.
    An unknown tag raises ValueError naming the ones there are."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError, AttributeError):
        return None
    if tag is None or tag == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[tag]
    except KeyError:
        raise ValueError(f"model.weights_tag={tag!r} is not one of {name}'s ImageNet weights: "
                         f"{', '.join(weights_tags(name))} (DEFAULT is {enum.DEFAULT.name}).") from None


def _torchvision_default_weights(name: str):
    """torchvision's DEFAULT weights enum member for ``name``, or None."""
    return torchvision_weights(name)


def resolved_weights_tag(name: str, tag: Optional[str] = None) -> Optional[str]:
    """Which weights ``model.weights_tag`` means for ``name``: the enum member's own name
    (``DEFAULT`` resolved, e.g. IMAGENET1K_V2 for resnet50), timm's pretrained tag, or None."""
    if name.startswith("timm/"):
        import timm

        base = name[len("timm/"):]
        cfg = timm.models.get_pretrained_cfg(f"{base}.{tag}" if tag else base)
        return getattr(cfg, "tag", None) or tag
    w = torchvision_weights(name, tag)
    return w.name if w is not None else None


def weights_cache_path(name: str, tag: Optional[str] = None) -> Optional[Path]:
    """The file torchvision's ``pretrained`` weights for ``name`` (``tag``) are cached in.

    ``$TORCH_HOME/hub/checkpoints/<basename of the weights URL>`` (i.e.
    ``torch.hub.get_dir()/checkpoints/...``). ``None`` for models that are not
    torchvision models (timm models use the Hugging Face hub cache; custom models
    have no pretrained weights).
    """
    w = torchvision_weights(name, tag)
    if w is None:
        return None
    filename = os.path.basename(urlparse(w.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _download(url: str, dst: Path, *, hash_prefix: Optional[str], progress: bool) -> None:
    """Download ``url`` to ``dst`` (atomic: torch.hub writes a temp file, then moves it).

    A separate function so tests can simulate "no network" deterministically.
    """
    torch.hub.download_url_to_file(url, str(dst), hash_prefix, progress=progress)


def fetch_weights(name: str, tag: Optional[str] = None, *, progress: bool = True,
                  force: bool = False) -> Optional[Path]:
    """Download the ImageNet weights of ``name`` into the cache pretrained=True reads.

    torchvision models: downloads to :func:`weights_cache_path` (hash-checked) and
    returns the path; does nothing if the file is already there unless ``force``.
    ``timm/<name>``: lets timm download into the Hugging Face hub cache; returns None.
    Raises ``ValueError`` for models without pretrained weights; network errors
    propagate.
    """
    if name.startswith("timm/"):
        import timm

        base = name[len("timm/"):]
        timm.create_model(f"{base}.{tag}" if tag else base, pretrained=True)
        return None
    w = torchvision_weights(name, tag)
    if w is None:
        raise ValueError(f"model {name!r} has no downloadable pretrained weights")
    path = weights_cache_path(name, tag)
    assert path is not None
    if path.is_file() and not force:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # torchvision file names end in -<sha256 prefix>.pth; check it like torch.hub does.
    m = re.search(r"-([a-f0-9]*)\.", path.name)
    log.info("downloading %s -> %s", w.url, path)
    _download(w.url, path, hash_prefix=m.group(1) if m else None, progress=progress)
    return path


def unavailable_message(
    name: str, path: Optional[Path], url: Optional[str], cause: object, *, what: str = "the file"
) -> str:
    """The one-paragraph explanation carried by :class:`PretrainedWeightsUnavailable`."""
    where = f"{what} {path}" if path is not None else "the weights"
    src = f" from {url}" if url else ""
    copy = (
        f"(or download {url} where there is a network and copy it to {path})"
        if url and path is not None
        else "(or fetch them where there is a network and copy the cache over)"
    )
    return (
        f"Pretrained ImageNet weights for model {name!r} are unavailable: {where} is not in "
        f"the local cache and downloading it{src} failed ({type(cause).__name__}: {cause}). "
        f"Fix: run `bench-fetch-weights {name}` on a machine with network access {copy}; "
        f"or train from scratch with `model.pretrained=false`."
    )


def ensure_torchvision_weights(name: str, tag: Optional[str] = None) -> Path:
    """Path of the cached torchvision weights for ``name`` (``tag``; None = the latest),
    downloading them if needed.

    Raises :class:`PretrainedWeightsUnavailable` if the file is not cached and the
    download fails (e.g. offline).
    """
    path = weights_cache_path(name, tag)
    if path is None:
        raise PretrainedWeightsUnavailable(f"torchvision has no pretrained weights for {name!r}")
    if path.is_file():
        return path
    w = torchvision_weights(name, tag)
    try:
        fetch_weights(name, tag)
    except Exception as exc:  # any network/hash/IO failure means "not available here"
        raise PretrainedWeightsUnavailable(unavailable_message(name, path, w.url, exc)) from exc
    return path


# ---------------------------------------------------------------- local checkpoints


def check_weights_path(path: Union[str, Path]) -> Path:
    """``Path(path)``, or FileNotFoundError naming the path and the option."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"model.weights={path}: no such file ({p.resolve()}). Point model.weights at a "
            f"checkpoint or state dict saved with torch.save, or set model.weights=null."
        )
    return p


def _strip_prefix(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                changed = True
    return key


def _extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"model.weights={path}: expected a state dict or a checkpoint dict with a "
            f"'model' state dict, got {type(obj).__name__}"
        )
    return {_strip_prefix(str(k)): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def load_local_weights(model: nn.Module, path: Union[str, Path]) -> dict[str, Any]:
    """Load a local checkpoint into ``model`` as far as names and shapes match.

    Accepts a raw state dict or a dict with a ``"model"`` (or ``"state_dict"``)
    entry, loaded with ``torch.load(weights_only=True, map_location="cpu")``.
    Leading ``module.`` / ``_orig_mod.`` prefixes are stripped. Tensors whose
    shape differs from the model's (typically the head when the class count
    differs) are skipped, as are missing and unexpected keys.

    Returns a report dict: ``path``, ``loaded`` (number of tensors loaded),
    ``skipped`` ({name: (checkpoint_shape, model_shape)}), ``missing`` (model keys
    not in the checkpoint) and ``unexpected`` (checkpoint keys not in the model).
    Raises FileNotFoundError for a missing file and ValueError if nothing matches.
    """
    p = check_weights_path(path)
    state = _extract_state_dict(torch.load(p, map_location="cpu", weights_only=True), p)
    own = model.state_dict()
    to_load: dict[str, torch.Tensor] = {}
    skipped: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    unexpected: list[str] = []
    for k, v in state.items():
        if k not in own:
            unexpected.append(k)
        elif tuple(v.shape) != tuple(own[k].shape):
            skipped[k] = (tuple(v.shape), tuple(own[k].shape))
        else:
            to_load[k] = v
    if not to_load:
        raise ValueError(
            f"model.weights={path}: no tensor matches the model by name and shape "
            f"(wrong architecture?); {len(unexpected)} unexpected, {len(skipped)} shape mismatches"
        )
    model.load_state_dict(to_load, strict=False)
    return {
        "path": str(p),
        "loaded": len(to_load),
        "skipped": skipped,
        "missing": sorted(k for k in own if k not in state),
        "unexpected": sorted(unexpected),
    }


def format_load_report(report: Mapping[str, Any]) -> str:
    """A one-line summary of a :func:`load_local_weights` report for logs."""
    parts = [f"loaded {report['loaded']} tensors from {report['path']}"]
    if report["skipped"]:
        items = ", ".join(f"{k} {list(a)}->{list(b)}" for k, (a, b) in report["skipped"].items())
        parts.append(f"skipped (shape mismatch): {items}")
    if report["missing"]:
        parts.append(f"missing: {', '.join(report['missing'])}")
    if report["unexpected"]:
        parts.append(f"unexpected: {', '.join(report['unexpected'])}")
    return "; ".join(parts)
