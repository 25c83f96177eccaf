"""The 27 torchvision architectures, registered under their torchvision names.

Each builder builds torchvision's network with its 1000-way ImageNet head (loading
the ImageNet weights first when ``pretrained``), then replaces that family's own
head with a fresh ``num_classes``-way layer (:func:`replace_head`; the path is the
spec's ``head``, registered below, which :mod:`bench.models.heads` reads too):

=========================================  ===========================================
family                                     head replaced
=========================================  ===========================================
alexnet, vgg*                              ``classifier[6]`` (Linear)
squeezenet*                                ``classifier[1]`` (final 1x1 conv; ReLU and
                                           avgpool after it are kept)
densenet*                                  ``classifier`` (Linear)
resnet*, resnext*, wide_resnet*, googlenet ``fc`` (Linear)
mobilenet_v2                               ``classifier[1]`` (Linear)
inception_v3                               ``fc`` and ``AuxLogits.fc`` (Linear)
=========================================  ===========================================

Head initialisation: every new head gets ``kaiming_normal_`` weights (fan_in,
ReLU gain) and a zero bias, see :func:`~bench.models._layers.init_head_`. torchvision
initialises the heads differently per family (VGG/SqueezeNet N(0, 0.01), ResNet PyTorch's
default uniform, Inception truncated normal); one rule for all keeps the comparison across
the zoo fair and reproducible. fan_in scaling by sqrt(2 / fan_in) keeps the logits'
variance independent of the feature width (512 for resnet18, 4096 for VGG, 2208
for densenet161), since every head reads non-negative post-ReLU/pooled features;
a zero bias gives no class an initial preference.

Input sizes: ``input_size`` is 224 (299 for inception_v3). ``min_input_size`` was
measured (smallest square input that runs in eval mode): alexnet 63, VGG 32,
squeezenet1_0 21, squeezenet1_1 17, densenet 29, googlenet 15, inception_v3 75.
ResNet-style nets and MobileNetV2 accept any size thanks to adaptive pooling; 32
is recorded for them (their five stride-2 stages reduce 32 px to a 1x1 map).
inception_v3 in *train* mode needs 299: its auxiliary head (avgpool 5/3 then a
5x5 conv on Mixed_6e) needs a 17x17 map (``min_train_input_size``).

Auxiliary heads: inception_v3 is built with ``aux_logits=True``; in train mode it
returns ``InceptionOutputs(logits, aux_logits)`` and is trained with
``loss = main + 0.4 * aux`` (``aux_weight=0.4``); in eval mode it returns logits.
googlenet's aux heads are off (torchvision's pretrained googlenet has none
trained), so it always returns a logits tensor.

``transform_input``: with ImageNet weights, torchvision builds inception_v3 and
googlenet with ``transform_input=True`` (the ported Google weights expect inputs in
[-1, 1]; the model converts ImageNet-normalised input itself), so the data
pipeline normalises with ImageNet mean/std for every model. From scratch it is False.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ._layers import init_head_, new_linear
from ._registry import register_model
from .weights import ensure_torchvision_weights, torchvision_weights


def build_torchvision(name: str, pretrained: bool | str, **kwargs: Any) -> nn.Module:
    """torchvision's ``name`` with its ImageNet head; ImageNet weights if ``pretrained``
    (``True``: the latest, torchvision's DEFAULT; a tag such as ``"IMAGENET1K_V1"``: those).

    Weights go through torchvision's weights API, which reads the torch hub cache
    (``weights_cache_path(name, tag)``); :func:`ensure_torchvision_weights` first makes
    sure the file is there, raising ``PretrainedWeightsUnavailable`` if it cannot be.
    """
    import torchvision

    weights = None
    if pretrained:
        tag = None if pretrained is True else str(pretrained)
        ensure_torchvision_weights(name, tag)
        weights = torchvision_weights(name, tag)
    return torchvision.models.get_model(name, weights=weights, **kwargs)


# ------------------------------------------------------------------- heads


def replace_head(model: nn.Module, head: str, num_classes: int) -> None:
    """Replace the layer at dotted path ``head`` (the spec's ``head``) by a fresh
    ``num_classes``-way one: a Linear, or for SqueezeNet a 1x1 convolution."""
    old = model.get_submodule(head)
    if isinstance(old, nn.Conv2d):  # SqueezeNet: Dropout, [Conv2d 1x1], ReLU, AdaptiveAvgPool2d
        model.set_submodule(head, init_head_(nn.Conv2d(old.in_channels, num_classes, kernel_size=1)))
        model.num_classes = num_classes
    else:
        model.set_submodule(head, new_linear(old, num_classes))


def _family(names: list[str], family: str, head: str, min_input_size: int) -> None:
    """Register one builder per name: build, then replace the layer at ``head``."""
    for arch in names:

        def builder(num_classes: int, pretrained: bool = False, _arch: str = arch) -> nn.Module:
            model = build_torchvision(_arch, pretrained)
            replace_head(model, head, num_classes)
            return model

        builder.__name__ = builder.__qualname__ = arch
        register_model(
            arch, input_size=224, min_input_size=min_input_size, family=family, source="torchvision", head=head
        )(builder)


_VGGS = ["vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]
_family(_VGGS, "vgg", "classifier.6", min_input_size=32)
_family(["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"], "resnet", "fc", 32)
_family(["resnext50_32x4d", "resnext101_32x8d"], "resnext", "fc", 32)
_family(["wide_resnet50_2", "wide_resnet101_2"], "wide_resnet", "fc", 32)
_family(["densenet121", "densenet161", "densenet169", "densenet201"], "densenet", "classifier", 29)
_family(["squeezenet1_0"], "squeezenet", "classifier.1", min_input_size=21)
_family(["squeezenet1_1"], "squeezenet", "classifier.1", min_input_size=17)
_family(["alexnet"], "alexnet", "classifier.6", min_input_size=63)
_family(["mobilenet_v2"], "mobilenet", "classifier.1", min_input_size=32)


@register_model("googlenet", input_size=224, min_input_size=15, family="googlenet", source="torchvision",
                pretrained_transform_input=True, head="fc")
def googlenet(num_classes: int, pretrained: bool = False) -> nn.Module:
    # Aux heads off: with weights torchvision loads them, then drops them (aux_logits
    # defaults to False); from scratch we ask for none. init_weights silences a warning.
    kwargs = {} if pretrained else {"aux_logits": False, "init_weights": True}
    model = build_torchvision("googlenet", pretrained, **kwargs)
    replace_head(model, "fc", num_classes)
    return model


@register_model(
    "inception_v3",
    input_size=299,
    min_input_size=75,
    min_train_input_size=299,
    family="inception",
    source="torchvision",
    aux_weight=0.4,
    pretrained_transform_input=True,
    head="fc",
)
def inception_v3(num_classes: int, pretrained: bool = False) -> nn.Module:
    # With weights torchvision itself sets transform_input=True and init_weights=False
    # (and rejects a conflicting init_weights), so only pass those from scratch.
    kwargs = {"aux_logits": True} if pretrained else {"aux_logits": True, "init_weights": True}
    model = build_torchvision("inception_v3", pretrained, **kwargs)
    replace_head(model, "fc", num_classes)
    replace_head(model, "AuxLogits.fc", num_classes)  # the auxiliary head, trained with aux_weight
    return model
