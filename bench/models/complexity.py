"""Model size and compute: parameters (millions) and GFLOPs per image.

FLOP convention: :class:`torch.utils.flop_counter.FlopCounterMode` counts a
multiply-add as 2 FLOPs (a conv/matmul with M multiply-accumulates = 2*M FLOPs),
so numbers are about twice the "GMACs" often quoted as "FLOPs" (torchvision's
``_ops`` metadata, many papers): resnet18 at 224 px is ~3.6 GFLOPs here vs
~1.8 GMACs. Only ops with a registered formula are counted (convolutions,
matmuls/linear, attention, ...); elementwise ops, BN, pooling and activations
are not, which is negligible for CNNs.
"""

from __future__ import annotations

import copy
from typing import Union

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, *, trainable_only: bool = False) -> float:
    """Number of parameters in millions (all, or only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only) / 1e6


def is_detector(model: nn.Module) -> bool:
    """A torchvision detection model: it normalises and resizes inside (GeneralizedRCNNTransform)."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    return isinstance(getattr(model, "transform", None), GeneralizedRCNNTransform)


def _hw(input_size: Union[int, tuple[int, ...], list[int]]) -> tuple[int, int]:
    if isinstance(input_size, int):
        return input_size, input_size
    size = tuple(int(s) for s in input_size)
    if len(size) == 1:
        return size[0], size[0]
    return size[-2], size[-1]  # (H, W) or (C, H, W)


def count_gflops(
    model: nn.Module,
    input_size: Union[int, tuple[int, ...]],
    *,
    device: Union[str, torch.device] = "cpu",
) -> float:
    """GFLOPs of one forward pass of one 3-channel ``input_size`` image, in eval mode.

    ``input_size`` is a side (int) or (H, W) / (C, H, W). The forward runs under
    ``torch.no_grad()`` with every module in eval mode (no aux heads, no dropout);
    each module's train/eval flag is restored afterwards. If the model's parameters
    are not on ``device``, a temporary copy is moved there (the model itself is not
    moved). Multiply-add = 2 FLOPs (see module docstring).
    """
    device = torch.device(device)
    h, w = _hw(input_size)
    channels = int(input_size[0]) if not isinstance(input_size, int) and len(input_size) == 3 else 3
    param = next(iter(model.parameters()), None)
    net = model
    if param is not None and param.device.type != device.type:
        net = copy.deepcopy(model).to(device)
    modes = {m: m.training for m in net.modules()}
    try:
        net.eval()
        x = torch.zeros(1, channels, h, w, device=device, dtype=param.dtype if param is not None else None)
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            net([x[0]] if is_detector(net) else x)  # a detector takes a list of images (of a blank field here)
        return counter.get_total_flops() / 1e9
    finally:
        for m, training in modes.items():
            m.training = training
