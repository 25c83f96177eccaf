"""The model registry: one table of :class:`ModelSpec` entries and one constructor.

Every architecture is registered once, with a decorator placed on a small builder
function (``builder(num_classes, pretrained) -> nn.Module``) that builds the
network, optionally with ImageNet weights, and replaces its classification head.
:func:`create_model` is the only way the rest of ``bench`` builds a model.

Models from timm are not registered one by one: any ``timm/<name>`` that
``timm.is_model(name)`` accepts gets a spec created on the fly (see
:mod:`bench.models.timm_zoo`).
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
from pathlib import Path
from typing import Callable, Optional, Union

from torch import nn

from ._spec import TIMM_PREFIX, Builder, ModelSpec

log = logging.getLogger(__name__)

_REGISTRY: dict[str, "ModelSpec"] = {}


class UnknownModelError(ValueError):
    """Raised for a model name that is neither registered nor a known timm model."""


def register_model(
    name: str,
    *,
    input_size: int = 224,
    min_input_size: int = 32,
    family: str = "",
    source: str = "custom",
    aux_weight: float = 0.0,
    min_train_input_size: Optional[int] = None,
    pretrained_transform_input: bool = False,
    task: str = "classification",
    head: str = "",
) -> Callable[[Builder], Builder]:
    """Decorator that registers ``builder(num_classes, pretrained)`` under ``name``.

    The keywords are the :class:`~bench.models._spec.ModelSpec` fields (``family`` defaults
    to ``name``); ``head`` is the dotted path of the head the builder installs.

    Raises ``ValueError`` if ``name`` is already registered or uses the reserved
    ``timm/`` prefix. Returns the builder unchanged.
    """

    def decorator(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        if name.startswith(TIMM_PREFIX):
            raise ValueError(f"names starting with {TIMM_PREFIX!r} are reserved for timm models")
        _REGISTRY[name] = ModelSpec(
            name=name,
            builder=builder,
            input_size=input_size,
            min_input_size=min_input_size,
            family=family or name,
            source=source,
            aux_weight=aux_weight,
            min_train_input_size=min_train_input_size,
            pretrained_transform_input=pretrained_transform_input,
            task=task,
            head=head,
        )
        return builder

    return decorator


def list_models(pattern: Optional[str] = None) -> list[str]:
    """Sorted registered model names, optionally filtered by an fnmatch glob.

    timm's ~1300 architectures are not listed by default; a pattern that starts
    with ``timm/`` (e.g. ``"timm/resnet*"``) searches timm's catalogue instead.
    """
    if pattern is not None and pattern.startswith(TIMM_PREFIX):
        from .timm_zoo import list_timm_models

        return list_timm_models(pattern[len(TIMM_PREFIX):])
    names = sorted(_REGISTRY)
    if pattern is None:
        return names
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def _unknown(name: str, candidates: list[str]) -> UnknownModelError:
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return UnknownModelError(
        f"Unknown model {name!r}.{hint} Run `bench-models` to list all registered models "
        f"(or `bench-models 'timm/<glob>'` to search timm)."
    )


def get_model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` for ``name``; raises :class:`UnknownModelError`."""
    spec = _REGISTRY.get(name)
    if spec is not None:
        return spec
    if name.startswith(TIMM_PREFIX):
        from .timm_zoo import list_timm_models, timm_spec

        spec = timm_spec(name[len(TIMM_PREFIX):])
        if spec is not None:
            return spec
        raise _unknown(name, list_timm_models())
    raise _unknown(name, list(_REGISTRY))


def create_model(
    name: str,
    *,
    num_classes: int,
    pretrained: bool = False,
    weights: Union[str, Path, None] = None,
    weights_tag: Optional[str] = None,
    image_size: Optional[int] = None,
    detector_kwargs: Optional[dict] = None,
) -> nn.Module:
    """Build model ``name`` with a fresh ``num_classes``-way head.

    Args:
        name: a name from :func:`list_models` or ``timm/<timm name>``.
        num_classes: number of outputs of the (new) classification head.
        pretrained: start from ImageNet weights (loaded into the ImageNet-headed
            network before its head is replaced). Raises
            :class:`~bench.models.weights.PretrainedWeightsUnavailable` when the
            weights are neither cached nor downloadable.
        weights: optional local checkpoint / state dict applied after the head is
            replaced (see :func:`~bench.models.weights.load_local_weights`);
            tensors whose shapes differ (e.g. the head) are skipped.
        weights_tag: which ImageNet weights with ``pretrained`` (torchvision's
            ``IMAGENET1K_V1``, ``IMAGENET1K_V2``, ...; timm's pretrained tag); None = the
            latest. Builders receive it as ``pretrained="<tag>"``.

    The model is returned in train mode and on the CPU, unwrapped.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    spec = get_model_spec(name)
    if weights is not None:
        # Fail before an expensive build/download if the path is wrong.
        from .weights import check_weights_path

        check_weights_path(weights)
    # Detectors resize inside the network (to image_size) and take constructor options.
    kwargs = {"image_size": image_size, **(detector_kwargs or {})} if spec.task == "detection" else {}
    model = spec.builder(num_classes=num_classes, pretrained=(weights_tag or True) if pretrained else False, **kwargs)
    if weights is not None:
        from .weights import format_load_report, load_local_weights

        report = load_local_weights(model, weights)
        log.info("%s: %s", name, format_load_report(report))
    return model
