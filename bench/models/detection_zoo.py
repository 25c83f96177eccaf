"""The torchvision detection zoo in the one model registry (``task="detection"``).

Each builder is ``builder(num_classes, pretrained, image_size)``: ``num_classes`` object classes
(label 0 is the background, torchvision's convention, so the network has ``num_classes + 1``
outputs), images resized inside the network to ``image_size`` (``min_size = max_size``; the
torchvision default of 800 px would make every CPU step 10x slower). Weights, in the order the
issue asks for them: ``pretrained=true`` loads COCO weights through torchvision's weights API
and the torch hub cache and replaces the class layers for the dataset's classes (the SSD
models start from their ImageNet backbone instead); ``false`` builds the whole network from
scratch. Offline without the file: the classifiers' one-paragraph message.
"""

from __future__ import annotations

import math
import os
from urllib.parse import urlparse

import torch
from torch import nn

from ._registry import register_model
from .weights import PretrainedWeightsUnavailable, _download, unavailable_message

DETECTORS = {
    # name: (family, default input size)
    "fasterrcnn_resnet50_fpn": ("fasterrcnn", 800),
    "fasterrcnn_resnet50_fpn_v2": ("fasterrcnn", 800),
    "fasterrcnn_mobilenet_v3_large_fpn": ("fasterrcnn", 800),
    "fasterrcnn_mobilenet_v3_large_320_fpn": ("fasterrcnn", 320),
    "retinanet_resnet50_fpn": ("retinanet", 800),
    "retinanet_resnet50_fpn_v2": ("retinanet", 800),
    "fcos_resnet50_fpn": ("fcos", 800),
    "ssd300_vgg16": ("ssd", 300),
    "ssdlite320_mobilenet_v3_large": ("ssd", 320),
}


def ensure_weights(weights, name: str) -> None:
    """The file of a torchvision weights enum member in the torch hub cache, downloaded if possible;
    PretrainedWeightsUnavailable with the fixes otherwise."""
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(weights.url).path))
    if os.path.isfile(path):
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _download(weights.url, path, hash_prefix=None, progress=False)
    except Exception as exc:
        raise PretrainedWeightsUnavailable(unavailable_message(name, path, weights.url, exc)) from exc


# family: (module of torchvision.models.detection, class)
FAMILY_CLASSES = {"fasterrcnn": ("faster_rcnn", "FasterRCNN"), "retinanet": ("retinanet", "RetinaNet"),
                  "fcos": ("fcos", "FCOS"), "ssd": ("ssd", "SSD")}


def detector_options(name: str, options) -> dict:
    """The entries of ``model.detector_kwargs`` that go to detector ``name``'s constructor.

    A flat entry goes to every detector; an entry named after a family (``fasterrcnn``,
    ``retinanet``, ``fcos``, ``ssd``) holds that family's own options, so one sweep can span
    families whose constructors take different options (experiment=detect_quickstart tunes
    Faster R-CNN's proposal counts, which an SSD does not have)."""
    family = DETECTORS[name][0]
    options = dict(options or {})
    flat = {k: v for k, v in options.items() if k not in FAMILY_CLASSES}
    return {**flat, **dict(options.get(family) or {})}


def unknown_detector_options(name: str, options) -> list[str]:
    """The options :func:`detector_options` gives ``name`` that its family's constructor does not take."""
    import importlib
    import inspect

    import torchvision.models.detection as tvd
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    module, cls = FAMILY_CLASSES[DETECTORS[name][0]]
    family_class = getattr(importlib.import_module(f"torchvision.models.detection.{module}"), cls)

    # The builder's own options, the family class's, and the resizing transform's (each class
    # passes its **kwargs on to GeneralizedRCNNTransform).
    accepted = set()
    for f in (getattr(tvd, name), family_class.__init__, GeneralizedRCNNTransform.__init__):
        accepted |= {n for n, p in inspect.signature(f).parameters.items()
                     if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n != "self"}
    accepted -= {"weights", "weights_backbone", "num_classes", "progress"}  # the harness sets these
    return sorted(set(detector_options(name, options)) - accepted)


CAP_OPTIONS = ("box_detections_per_img", "detections_per_img")  # torchvision's names of model.max_detections


def detector_options_problem(name: str, options) -> str | None:
    """The one message for options a detector does not take (the preflight's and the builder's), and
    for its cap given as a constructor option: model.max_detections sets it, and COCO's scoring too."""
    given = detector_options(name, options)
    cap = next((k for k in CAP_OPTIONS if k in given), None)
    if cap:
        return (f"{name}: model.detector_kwargs {cap} is the cap on boxes per field, which model.max_detections "
                f"sets (for the detector and for COCO's scoring alike); use model.max_detections={given[cap]} "
                "instead.")
    unknown = unknown_detector_options(name, options)
    if not unknown:
        return None
    return (f"{name}: model.detector_kwargs {', '.join(unknown)} not taken by torchvision's "
            f"{FAMILY_CLASSES[DETECTORS[name][0]][1]}; put a family's own options under "
            f"model.detector_kwargs.<family> ({', '.join(FAMILY_CLASSES)}), e.g. "
            "model.detector_kwargs.fasterrcnn.rpn_pre_nms_top_n_train=500, or drop them.")


def build_detector(name: str, num_classes: int, pretrained: bool | str, image_size: int, **options) -> nn.Module:
    import torchvision

    family = DETECTORS[name][0]
    problem = detector_options_problem(name, options)
    if problem:
        raise ValueError(problem)
    kwargs = detector_options(name, options)
    ctor = getattr(torchvision.models.detection, name)
    size = {**({} if family == "ssd" else {"min_size": image_size, "max_size": image_size}), **kwargs}
    if not pretrained:
        return ctor(weights=None, weights_backbone=None, num_classes=num_classes + 1, **size)
    if family == "ssd":  # an ImageNet backbone, a new detection head
        backbone = _backbone_weights(ctor)
        ensure_weights(backbone, name)
        return ctor(weights=None, weights_backbone=backbone, num_classes=num_classes + 1, **kwargs)
    weights = torchvision.models.get_model_weights(name).DEFAULT  # COCO_V1
    ensure_weights(weights, name)
    model = ctor(weights=weights, **size)
    replace_class_layers(model, family, num_classes + 1)
    return model


def set_max_detections(model: nn.Module, max_detections: int) -> None:
    """At most ``max_detections`` boxes per image after non-maximum suppression: torchvision's
    ``box_detections_per_img`` (Faster R-CNN) / ``detections_per_img`` (RetinaNet, FCOS, SSD), 100
    (SSD300: 200) when built. It acts only when the detector predicts, so it can be set on any
    built or rebuilt detector (``model.max_detections``)."""
    if int(max_detections) < 1:
        raise ValueError(f"model.max_detections={max_detections}: the most boxes a field may get, at least 1 "
                         "(300 fits a crowded smear field).")
    heads = model.roi_heads if hasattr(model, "roi_heads") else model  # Faster R-CNN keeps it in its box heads
    heads.detections_per_img = int(max_detections)


def match_detector_state_dict(model: nn.Module, state_dict: dict) -> None:
    """Make a from-scratch build hold the layers a trained detector's weights were saved from.

    torchvision builds a detector that starts from COCO or ImageNet weights with
    ``FrozenBatchNorm2d`` (eps 1e-5) in its backbone and from scratch with ``BatchNorm2d``; the
    saved tensors tell which: a frozen layer has no ``num_batches_tracked``. Such layers are
    swapped in place, so any best.pt rebuilds without downloading its starting weights."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    for name, module in list(model.named_modules()):
        if isinstance(module, nn.BatchNorm2d) and f"{name}.weight" in state_dict \
                and f"{name}.num_batches_tracked" not in state_dict:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, FrozenBatchNorm2d(module.num_features))


def _backbone_weights(ctor):
    """The ImageNet backbone weights the constructor uses by default (e.g. VGG16's IMAGENET1K_FEATURES)."""
    import inspect

    return inspect.signature(ctor).parameters["weights_backbone"].default


def replace_class_layers(model: nn.Module, family: str, n_outputs: int) -> None:
    """COCO's 91-way class layers -> ``n_outputs``-way, freshly initialised as torchvision does."""
    if family == "fasterrcnn":
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

        in_features = model.roi_heads.box_predictor.cls_score.in_features
        model.roi_heads.box_predictor = FastRCNNPredictor(in_features, n_outputs)
        return
    head = model.head.classification_head
    old = head.cls_logits
    head.cls_logits = nn.Conv2d(old.in_channels, head.num_anchors * n_outputs, kernel_size=3, stride=1, padding=1)
    nn.init.normal_(head.cls_logits.weight, std=0.01)
    nn.init.constant_(head.cls_logits.bias, -math.log((1 - 0.01) / 0.01))  # RetinaNet / FCOS prior
    head.num_classes = n_outputs


def _register(name: str, family: str, size: int) -> None:
    def builder(num_classes: int, pretrained: bool | str = False, image_size: int | None = None,
                **kwargs) -> nn.Module:
        return build_detector(name, num_classes, pretrained, image_size or size, **kwargs)

    builder.__name__ = name
    register_model(name, input_size=size, min_input_size=64, family=family, source="torchvision",
                   task="detection")(builder)


for _name, (_family, _size) in DETECTORS.items():
    _register(_name, _family, _size)
