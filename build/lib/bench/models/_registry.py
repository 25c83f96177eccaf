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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

from torch import nn

log = logging.getLogger(__name__)

Builder = Callable[..., nn.Module]

TIMM_PREFIX = "timm/"

_REGISTRY: dict[str, "ModelSpec"] = {}


@dataclass(frozen=True)
class ModelSpec:
    """What the harness needs to know about one model.

    Attributes:
        name: registry name (torchvision name, ``timm/<name>`` or a custom name).
        builder: ``builder(num_classes: int, pretrained: bool) -> nn.Module``.
        input_size: side of the square input the model is meant to be trained at.
        min_input_size: smallest square input the network accepts in eval mode.
        family: architecture family (``"resnet"``, ``"vgg"``, ...).
        source: ``"torchvision"``, ``"timm"`` or ``"custom"``.
        aux_weight: weight of the auxiliary loss in train mode (0 = no aux head).
            For inception_v3 it is 0.4: in train mode the model returns
            ``InceptionOutputs(logits, aux_logits)`` and the loss is
            ``main + aux_weight * aux``; in eval mode it returns logits only.
        min_train_input_size: smallest input accepted in *train* mode, where it
            differs from ``min_input_size`` (inception_v3's aux head needs 299);
            ``None`` means the same as ``min_input_size``.
        pretrained_transform_input: the network converts ImageNet-normalised input itself
            when built with ImageNet weights (torchvision's ``transform_input=True`` for
            inception_v3 and googlenet, whose ported Google weights expect [-1, 1]); a model
            rebuilt from a fine-tuned checkpoint of such a run must do the same.
    """

    name: str
    builder: Builder
    input_size: int = 224
    min_input_size: int = 32
    family: str = ""
    source: str = "custom"
    aux_weight: float = 0.0
    min_train_input_size: Optional[int] = None
    pretrained_transform_input: bool = False
    task: str = "classification"  # classification | detection (bench.models.detection_zoo)

    @property
    def min_train_size(self) -> int:
        """Smallest input side that works in train mode."""
        return self.min_train_input_size or self.min_input_size

    def image_size(self, requested: Optional[int]) -> int:
        """``data.image_size`` for this model: the requested side, or its own input size when null."""
        return int(requested or self.input_size)


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
) -> Callable[[Builder], Builder]:
    """Decorator that registers ``builder(num_classes, pretrained)`` under ``name``.

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
