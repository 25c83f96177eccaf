"""Networks of the published protocols that are not in the torchvision zoo.

``wbcsnet``
    WBCsNet (``experiment=almotairi2019``), a small CNN trained from scratch:

    * a residual first block: three 5x5 convolutions with 64 filters, each followed by
      batch norm and ReLU, with an identity skip; the first convolution lifts the 3 input
      channels to 64, so the skip adds its output to that of the third
      (``x1 + f3(f2(x1))``); then 2x2 max-pool;
    * a 5x5 convolution with 256 filters + BN + ReLU + 2x2 max-pool;
    * a 3x3 convolution with 512 filters + BN + ReLU;
    * global average pooling, a 512-unit fully connected layer with ReLU and dropout (0.5),
      and the class layer (``fc``).

    It has no pretrained weights; to reuse it on a second (smaller) dataset, train it on
    the first and start the second from that checkpoint with ``model.weights=PATH``
    (the backbone loads, the class layer is skipped when the class count differs).

``mobilenet_v2_050``
    torchvision's MobileNetV2 at width multiplier 0.5 (``experiment=cheuque2022_two_level``).
    torchvision publishes ImageNet weights for width 1.0 only, so it trains from scratch;
    ``model=timm/mobilenetv2_050`` is the same width with timm's ImageNet weights.
"""

from __future__ import annotations

from torch import nn

from ._layers import init_head_
from ._registry import register_model
from .weights import PretrainedWeightsUnavailable


def _conv_bn_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class WBCsNet(nn.Module):
    def __init__(self, num_classes: int, dropout: float = 0.5):
        super().__init__()
        self.conv1 = _conv_bn_relu(3, 64, 5)
        self.conv2 = _conv_bn_relu(64, 64, 5)
        self.conv3 = _conv_bn_relu(64, 64, 5)
        self.pool1 = nn.MaxPool2d(2)
        self.block2 = nn.Sequential(_conv_bn_relu(64, 256, 5), nn.MaxPool2d(2))
        self.block3 = _conv_bn_relu(256, 512, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(512, 512)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                init_head_(m)  # Kaiming (fan_in, ReLU gain), zero bias: from scratch, every layer

    def forward(self, x):
        x = self.conv1(x)
        x = x + self.conv3(self.conv2(x))  # identity skip around the block's last two convolutions
        x = self.block3(self.block2(self.pool1(x)))
        x = self.pool(x).flatten(1)
        return self.fc(self.dropout(self.relu(self.fc1(x))))


@register_model("wbcsnet", input_size=128, min_input_size=16, family="wbcsnet", source="custom", head="fc")
def wbcsnet(num_classes: int, pretrained: bool = False) -> nn.Module:
    if pretrained:
        raise PretrainedWeightsUnavailable(
            "wbcsnet has no pretrained weights (it is trained from scratch); set model.pretrained=false, "
            "or model.weights=PATH to start from a wbcsnet checkpoint of your own (e.g. a best.pt)."
        )
    return WBCsNet(num_classes)


@register_model("mobilenet_v2_050", input_size=128, min_input_size=32, family="mobilenet", source="custom",
                head="classifier.1")
def mobilenet_v2_050(num_classes: int, pretrained: bool = False) -> nn.Module:
    if pretrained:
        raise PretrainedWeightsUnavailable(
            "mobilenet_v2_050 (MobileNetV2 at width 0.5) has no torchvision ImageNet weights; set "
            "model.pretrained=false to train it from scratch, or use model=timm/mobilenetv2_050 for timm's "
            "ImageNet weights at this width."
        )
    import torchvision

    return torchvision.models.mobilenet_v2(weights=None, width_mult=0.5, num_classes=num_classes)
