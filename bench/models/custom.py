"""Custom (non-zoo) models, registered with :func:`register_model`.

To add one, write a builder ``(num_classes, pretrained=False) -> nn.Module`` and
decorate it with ``@register_model("name", input_size=..., min_input_size=...,
family=..., source="custom", head=...)`` in a module imported by ``bench.models``
(``head``: the dotted path of its classification layer, e.g. ``"fc"``).
"""

from __future__ import annotations

from torch import nn

from ._layers import init_head_
from ._registry import register_model
from .weights import PretrainedWeightsUnavailable


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SimpleCNN(nn.Module):
    """Four conv-BN-ReLU-maxpool blocks (32-64-128-256), global average pool,
    dropout and a linear classifier. About 0.4M parameters; fast on CPU at 64 px."""

    def __init__(self, num_classes: int, widths=(32, 64, 128, 256), dropout: float = 0.2):
        super().__init__()
        layers, cin = [], 3
        for w in widths:
            layers.append(_block(cin, w))
            cin = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                init_head_(m)  # Kaiming (fan_in, ReLU gain), zero bias: from scratch, every layer

    def forward(self, x):
        x = self.pool(self.features(x)).flatten(1)
        return self.fc(self.dropout(x))


@register_model("simple_cnn", input_size=64, min_input_size=16, family="custom", source="custom", head="fc")
def simple_cnn(num_classes: int, pretrained: bool = False) -> nn.Module:
    if pretrained:
        raise PretrainedWeightsUnavailable(
            "simple_cnn has no pretrained weights (it is a small custom CNN trained from "
            "scratch); set model.pretrained=false, or model.weights=PATH to start from one "
            "of your own checkpoints."
        )
    return SimpleCNN(num_classes)
