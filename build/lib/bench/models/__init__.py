"""Model zoo: one registry, one constructor.

>>> from bench.models import create_model, list_models, get_model_spec
>>> model = create_model("resnet18", num_classes=8, pretrained=False)

Importing this package registers the built-in models: the 27 torchvision
architectures (:mod:`.torchvision_zoo`), ``timm/<name>`` for any timm model
(:mod:`.timm_zoo`, created on demand) and custom models (:mod:`.custom`), then
your own from other packages (:mod:`.plugins`: entry points ``bench.models``, ``$BENCH_MODELS``).
"""

from ._registry import (
    ModelSpec,
    UnknownModelError,
    create_model,
    get_model_spec,
    list_models,
    register_model,
)
from .complexity import count_gflops, count_params
from .weights import PretrainedWeightsUnavailable, load_local_weights

# Register the built-in models (import for side effects).
from . import torchvision_zoo as _torchvision_zoo  # noqa: E402,F401  isort: skip
from . import timm_zoo as _timm_zoo  # noqa: E402,F401  isort: skip
from . import custom as _custom  # noqa: E402,F401  isort: skip
from . import wbcsnet as _wbcsnet  # noqa: E402,F401  isort: skip
from . import mobilenet_v1 as _mobilenet_v1  # noqa: E402,F401  isort: skip
from . import detection_zoo as _detection_zoo  # noqa: E402,F401  isort: skip

# Then the user's own (entry points "bench.models" and $BENCH_MODELS; see .plugins).
from .plugins import load_plugins  # noqa: E402  isort: skip

load_plugins()

__all__ = [
    "ModelSpec",
    "register_model",
    "list_models",
    "create_model",
    "get_model_spec",
    "UnknownModelError",
    "PretrainedWeightsUnavailable",
    "load_local_weights",
    "count_params",
    "count_gflops",
    "load_plugins",
]
