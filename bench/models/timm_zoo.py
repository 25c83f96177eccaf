"""Any timm model, as ``timm/<name>`` (e.g. ``timm/resnet10t``, ``timm/efficientnet_b0``).

timm models are not registered one by one; :func:`timm_spec` creates a
:class:`ModelSpec` on the fly for any name ``timm.is_model`` accepts, with the
input size from timm's pretrained config. The builder creates the model with its
ImageNet head (``timm.create_model(name, pretrained=...)``, weights from the
Hugging Face hub cache), then ``reset_classifier(num_classes)`` and gives the new
head the same Kaiming initialisation as the torchvision zoo.

Offline, huggingface_hub retries for about a minute before giving up; set
``HF_HUB_OFFLINE=1`` to fail (or load from its cache) immediately.

timm is imported lazily so that ``import bench.models`` stays fast.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

from torch import nn

from ._layers import init_head_
from ._spec import TIMM_PREFIX, ModelSpec
from .weights import PretrainedWeightsUnavailable, unavailable_message


def list_timm_models(pattern: str = "") -> list[str]:
    """``timm/<name>`` for every timm architecture matching the fnmatch ``pattern``."""
    import timm

    return sorted(TIMM_PREFIX + n for n in timm.list_models(pattern or ""))


def _hf_cache_location(cfg) -> tuple[Optional[Path], Optional[str]]:
    """(where timm looks in the local cache, where it downloads from) for a pretrained cfg."""
    if cfg is None:
        return None, None
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        from huggingface_hub import constants

        repo = hub_id.split("@")[0]
        return Path(constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--")), (
            f"https://huggingface.co/{repo}"
        )
    url = getattr(cfg, "url", None)
    if url:
        import torch

        return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name, url
    return None, None


def build_timm(name: str, num_classes: int, pretrained: bool = False) -> nn.Module:
    """timm's ``name`` with ImageNet weights if asked, then a new ``num_classes`` head."""
    import timm

    if pretrained:
        if pretrained is not True:  # a weights tag: timm names it <model>.<tag>
            name = f"{name}.{pretrained}"
        try:
            model = timm.create_model(name, pretrained=True)
        except Exception as exc:  # offline / missing from the HF cache
            path, url = _hf_cache_location(timm.models.get_pretrained_cfg(name))
            raise PretrainedWeightsUnavailable(
                unavailable_message(
                    TIMM_PREFIX + name, path, url, exc, what="the Hugging Face hub cache entry"
                )
            ) from exc
    else:
        model = timm.create_model(name, pretrained=False)
    model.reset_classifier(num_classes)
    heads = model.get_classifier()
    for head in heads if isinstance(heads, (tuple, list)) else (heads,):
        for m in head.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                init_head_(m)
    return model


def _side(size) -> Optional[int]:
    return int(size[-1]) if size else None


@functools.lru_cache(maxsize=None)
def timm_spec(name: str) -> Optional[ModelSpec]:
    """A spec for timm model ``name`` (without the prefix), or None if timm lacks it."""
    import timm

    if not timm.is_model(name):
        return None
    cfg = timm.models.get_pretrained_cfg(name)
    input_size = _side(getattr(cfg, "input_size", None)) or 224
    if getattr(cfg, "fixed_input_size", False):
        min_input_size = input_size
    else:
        min_input_size = _side(getattr(cfg, "min_input_size", None)) or 32
    arch = timm.models.get_arch_name(name)
    entry = timm.models.model_entrypoint(arch)
    family = getattr(entry, "__module__", "timm").rsplit(".", 1)[-1]
    return ModelSpec(
        name=TIMM_PREFIX + name,
        builder=functools.partial(build_timm, name),
        input_size=input_size,
        min_input_size=min_input_size,
        family=family,
        source="timm",
        aux_weight=0.0,
    )
