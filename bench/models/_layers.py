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


def drop_aux_head(model: nn.Module) -> bool:
    """Remove Inception v3's auxiliary classifier; True if there was one.

    Done whenever the head is an MLP or any part of the network is frozen
    (:mod:`bench.models.heads`, :mod:`bench.models.blocks`): those protocols (Keras'
    InceptionV3 with a custom top) have no auxiliary head, and a frozen, randomly
    initialised one would only add noise to the loss. The model then returns logits in
    train mode too, so the loss is the main head's alone.
    """
    if getattr(model, "AuxLogits", None) is None:
        return False
    model.AuxLogits = None
    model.aux_logits = False
    return True
