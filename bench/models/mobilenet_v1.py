"""MobileNet v1 (Howard et al. 2017) at width 0.5, the level-2 network of Cheuque et al. 2022.

``mobilenet_v1_050``: a 3x3 stride-2 convolution with 32 x 0.5 = 16 filters, then 13
depthwise-separable blocks (3x3 depthwise + 1x1 pointwise, each convolution followed by
batch norm and ReLU6, no biases) with 64, 128, 128, 256, 256, 512 x 6, 1024, 1024 filters
times 0.5 (strides 2 at blocks 2, 4, 6 and 12), global average pooling and the class layer
``fc`` (512 -> classes). This is Keras' ``MobileNet(alpha=0.5)`` layer for layer: its
convolutional base has 829,536 parameters as Keras counts them (batch norm's moving mean and
variance included, buffers in PyTorch), so with Cheuque's head (``model.head_hidden=[512]``:
FC 512 + the 2-way layer, 263,682 parameters) the whole network has their Table 2's 1,093,218.

Neither torchvision nor timm publishes ImageNet weights for it; converted Keras weights load
with ``model.weights=PATH`` (names: ``features.<i>`` as here). ``pretrained=true`` is refused.
"""

from __future__ import annotations

from torch import nn

from ._layers import init_head_
from ._registry import register_model
from .weights import PretrainedWeightsUnavailable

# (filters at width 1, stride) of the 13 depthwise-separable blocks.
_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
           (512, 1), (1024, 2), (1024, 1))


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01),  # Keras' BatchNormalization defaults
        nn.ReLU6(inplace=True),
    )


class MobileNetV1(nn.Module):
    def __init__(self, num_classes: int, width: float = 0.5):
        super().__init__()
        cin = int(32 * width)
        layers = [_conv_bn(3, cin, 3, 2)]
        for filters, stride in _BLOCKS:
            cout = int(filters * width)
            layers.append(nn.Sequential(_conv_bn(cin, cin, 3, stride, groups=cin), _conv_bn(cin, cout, 1, 1)))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = init_head_(nn.Linear(cin, num_classes))
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


@register_model("mobilenet_v1_050", input_size=128, min_input_size=32, family="mobilenet_v1", head="fc")
def mobilenet_v1_050(num_classes: int, pretrained: bool = False) -> nn.Module:
    if pretrained:
        raise PretrainedWeightsUnavailable(
            "mobilenet_v1_050 has no ImageNet weights in torchvision or timm (Cheuque et al. used Keras' "
            "MobileNet(alpha=0.5)); set model.pretrained=false, or model.weights=PATH for converted weights.")
    return MobileNetV1(num_classes, width=0.5)
