"""Layer helpers shared by every zoo and by :mod:`bench.models.heads` (a leaf: it imports
nothing from ``bench.models``, so any module of the package can use it)."""

from __future__ import annotations

from torch import nn


def init_head_(layer: nn.Module) -> nn.Module:
    """Kaiming-normal (fan_in, ReLU gain) weights and zero bias, in place.

    The one initialisation of every new head in the zoo (see :mod:`bench.models.torchvision_zoo`
    for why), and of every layer of the custom networks trained from scratch.
    """
    nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)
    return layer


def new_linear(old: nn.Linear, num_classes: int) -> nn.Linear:
    """A Kaiming-initialised ``Linear(old.in_features, num_classes)``."""
    return init_head_(nn.Linear(old.in_features, num_classes))
