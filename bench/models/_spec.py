"""What the harness knows about one model: :class:`ModelSpec` (a leaf module: it imports
nothing from ``bench.models``, so the registry and every zoo can share it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from torch import nn

Builder = Callable[..., nn.Module]

TIMM_PREFIX = "timm/"  # registry names of timm models: timm/<timm name>


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
        task: ``"classification"`` or ``"detection"`` (:mod:`bench.models.detection_zoo`).
        head: dotted path of the classification head the builder installs (``"fc"``,
            ``"classifier.6"``, ...), where :mod:`bench.models.heads` puts an MLP head and
            which it never freezes; ``""``: found on the built model (timm's
            ``pretrained_cfg["classifier"]``, else the last ``nn.Linear``).
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
    head: str = ""

    @property
    def min_train_size(self) -> int:
        """Smallest input side that works in train mode."""
        return self.min_train_input_size or self.min_input_size

    def image_size(self, requested: Optional[int]) -> int:
        """``data.image_size`` for this model: the requested side, or its own input size when null."""
        return int(requested or self.input_size)
