"""Blocks and freezing: which parts of a network train (``model.freeze_backbone``,
``model.trainable_blocks``, ``model.trainable_conv_blocks``; applied by
:func:`bench.models.heads.configure_model`), and where a model's classification head is.

The head
--------
The *head* is the layer the registry replaced with a fresh ``num_classes``-way layer, at
the path its :class:`~bench.models.ModelSpec` names (``spec.head``, registered with each
model in :mod:`bench.models.torchvision_zoo`, :mod:`~bench.models.custom`, ...):
``classifier.6`` for VGG/AlexNet, ``fc`` for ResNet/ResNeXt/WRN/GoogLeNet/Inception v3,
``classifier`` for DenseNet, ``classifier.1`` for MobileNetV2/SqueezeNet; for
``timm/<name>`` the module named by ``pretrained_cfg["classifier"]``; for a model
registered without one (or whose head :mod:`bench.models.heads` moved) the last
``nn.Linear``, or the MLP head containing it. The head is never frozen.

Blocks
------
``trainable_blocks=N`` leaves the last N blocks (and always the head) trainable; a block
is a unit of the architecture's own design, not a single layer:

==============================  ==============================================================
family                          blocks, first to last (the head is never one of them)
==============================  ==============================================================
vgg, alexnet, squeezenet        the conv stages of ``features`` (each ends with its MaxPool),
                                then ``classifier`` minus the head (VGG: fc6 + fc7)
resnet, resnext, wide_resnet    stem (conv1 + bn1), layer1, layer2, layer3, layer4
densenet                        stem (conv0 + norm0), denseblock1, transition1, ...,
                                denseblock4 (+ norm5)
inception (v3)                  stem (every Conv2d_* before Mixed_5b), then each Mixed_*
                                module (Mixed_5b ... Mixed_7c = Keras mixed0 ... mixed10)
mobilenet                       each ``features[i]``, then ``classifier`` minus the head
                                (MobileNetV2: no parameters there, so no block)
googlenet, custom, timm/*       the model's top-level children in order, with containers
                                named features / blocks / stages / layers opened one level
                                (timm efficientnet/convnext stages, simple_cnn's conv blocks);
                                a child holding only normalisation parameters joins the block
                                before it (conv1 + bn1), a child without parameters is no
                                block, and the children around the head inside a head
                                container (e.g. ``head.norm``) form one last block
==============================  ==============================================================

So VGG16 has 6 blocks (``trainable_blocks=2`` = conv stage 5 + fc6/fc7 + the head),
ResNet 5, Inception v3 12 (``2`` = Mixed_7b + Mixed_7c + the head), timm's
legacy_xception 16 (conv1, conv2, block1 ... block12, conv3, conv4). Parameters outside
every block (e.g. a ViT's ``pos_embed``) train only when every block does.
``trainable_blocks=0`` is the same as ``freeze_backbone=true``; N >= the number of
blocks trains everything. :func:`list_blocks` lists a model's blocks.

``trainable_conv_blocks=N`` counts only the blocks that hold a convolution: the last N of
them train, with every block after them (VGG's fc6/fc7) and the head. This is how papers
say it ("the last four convolutional blocks", Acevedo et al. 2019), and it is one number
for networks whose fully connected part differs: VGG16 ``4`` = conv stages 2-5 + fc6 (+ fc7
when kept) + the head; Inception v3 ``4`` = Mixed_6e, Mixed_7a, Mixed_7b, Mixed_7c + the head.

Frozen means frozen
-------------------
Frozen parameters get ``requires_grad=False`` (``bench.training.classifier.prepare`` builds the optimizer
over the trainable ones), and BatchNorm and Dropout layers inside frozen blocks stay in eval
mode even while the model trains (their ``train()`` is pinned to eval), so a frozen
backbone's BN running statistics do not drift and its features are deterministic, as
with Keras' ``trainable=False``.

Inception v3's auxiliary classifier is removed whenever any part of the network is
frozen (:func:`~bench.models._layers.drop_aux_head` says why).
"""

from __future__ import annotations

import logging
import types
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from torch import nn

from ._layers import drop_aux_head
from ._registry import get_model_spec

log = logging.getLogger(__name__)

_POOL_STAGED = {"vgg", "alexnet", "squeezenet"}  # conv stages of `features` end at a MaxPool
_EXPANDED_CONTAINERS = {"features", "blocks", "stages", "layers"}
_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
_EVAL_PINNED_TYPES = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
_CONV_TYPES = (nn.modules.conv._ConvNd,)


@dataclass(frozen=True)
class Block:
    """One block: a name and the dotted paths of the modules it consists of."""

    name: str
    modules: tuple[str, ...]


# --------------------------------------------------------------------------- locating things
def _family(name: str) -> str:
    return get_model_spec(name).family


def head_path(model: nn.Module, name: str) -> str:
    """Dotted path of the classification head of ``model`` (registry model ``name``)."""
    spec = get_model_spec(name)
    if spec.source == "timm":
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        path = cfg.get("classifier") if isinstance(cfg, Mapping) else getattr(cfg, "classifier", None)
        if isinstance(path, (list, tuple)):  # distilled models name two heads; the first is the main one
            path = path[0]
        if path and _has_module(model, path):
            return path
    if spec.head and _has_module(model, spec.head):
        return spec.head
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{name}: cannot find its classification head (no nn.Linear in the model)")
    return _head_root(model, linears[-1])


def _head_root(model: nn.Module, path: str) -> str:
    """``fc.3`` (the last Linear of an MLP head this module installed) -> ``fc``."""
    parts = path.split(".")
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i])
        if getattr(model.get_submodule(prefix), "_bench_mlp_head", False):
            return prefix
    return path


def _has_module(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
        return True
    except AttributeError:
        return False


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _norm_only(module: nn.Module) -> bool:
    """Parameters, all of them in normalisation layers (bn1 after conv1)."""
    if not _has_params(module):
        return False
    if isinstance(module, _NORM_TYPES):
        return True
    own = [m for m in module.modules() if next(m.parameters(recurse=False), None) is not None]
    return all(isinstance(m, _NORM_TYPES) for m in own)


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root + ".")


# --------------------------------------------------------------------------- blocks
def list_blocks(model: nn.Module, name: str) -> list[Block]:
    """The blocks of ``model``, first to last, without the head (see the module docstring)."""
    family = _family(name)
    head = head_path(model, name)
    if family in _POOL_STAGED:
        blocks = _pool_stages(model)
    elif family == "inception":
        blocks = _inception_blocks(model)
    else:
        blocks = _generic_blocks(model, head)
    tail = _head_container_block(model, head)
    if tail is not None and not any(set(tail.modules) & set(b.modules) for b in blocks):
        blocks.append(tail)
    return blocks


def _pool_stages(model: nn.Module) -> list[Block]:
    blocks, current = [], []
    for child_name, child in model.features.named_children():
        current.append(f"features.{child_name}")
        if isinstance(child, nn.MaxPool2d):
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    out = []
    for i, paths in enumerate(blocks, start=1):
        paths = [p for p in paths if _has_params(model.get_submodule(p))]
        if paths:
            out.append(Block(f"stage{i}", tuple(paths)))
    return out


def _inception_blocks(model: nn.Module) -> list[Block]:
    stem, blocks = [], []
    for child_name, child in model.named_children():
        if not _has_params(child) or child_name in ("fc",):
            continue
        if child_name.startswith("Mixed_"):
            blocks.append(Block(child_name, (child_name,)))
        elif child_name == "AuxLogits":
            # Attached to Mixed_6e's output: it trains when Mixed_6e does (configure_model
            # removes it whenever anything is frozen, so this only matters for direct calls).
            prev = blocks[-1]
            blocks[-1] = Block(prev.name, (*prev.modules, child_name))
        elif not blocks:
            stem.append(child_name)
    return ([Block("stem", tuple(stem))] if stem else []) + blocks


def _generic_blocks(model: nn.Module, head: str) -> list[Block]:
    units: list[tuple[str, nn.Module]] = []
    for child_name, child in model.named_children():
        if _is_within(head, child_name):
            continue  # the head, or its container (handled by _head_container_block)
        if child_name in _EXPANDED_CONTAINERS and isinstance(child, (nn.Sequential, nn.ModuleList)):
            units.extend((f"{child_name}.{n}", c) for n, c in child.named_children())
        else:
            units.append((child_name, child))
    blocks: list[list[str]] = []
    for path, module in units:
        if not _has_params(module):
            continue
        if blocks and _norm_only(module):
            blocks[-1].append(path)
        else:
            blocks.append([path])
    return [Block(_block_name(paths[0]), tuple(paths)) for paths in blocks]


def _block_name(path: str) -> str:
    """``features.3`` -> ``features[3]``; ``features.denseblock1`` -> ``denseblock1``."""
    parent, _, leaf = path.rpartition(".")
    return f"{parent}[{leaf}]" if parent and leaf.isdigit() else leaf


def _head_container_block(model: nn.Module, head: str) -> Optional[Block]:
    """The parameter-holding siblings of the head inside its containers (VGG's fc6/fc7,
    timm's ``head.norm``), as one last block; None if there are none."""
    parts = head.split(".")
    paths = []
    for depth in range(1, len(parts)):
        parent = ".".join(parts[:depth])
        on_path = ".".join(parts[: depth + 1])
        for child_name, child in model.get_submodule(parent).named_children():
            path = f"{parent}.{child_name}"
            if path != on_path and _has_params(child):
                paths.append(path)
    return Block(parts[0] if len(parts) > 1 else "pre_head", tuple(paths)) if paths else None


# --------------------------------------------------------------------------- freezing
def _stay_in_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def _pin_eval(module: nn.Module) -> None:
    module.train = types.MethodType(_stay_in_eval, module)
    module.training = False


def _unpin_eval(model: nn.Module) -> None:
    for m in model.modules():
        m.__dict__.pop("train", None)


def _set_trainable(model: nn.Module, name: str, trainable_paths: Sequence[str]) -> None:
    """requires_grad only inside ``trainable_paths`` and the head; BN and Dropout layers
    outside them are pinned to eval mode."""
    keep = [*trainable_paths, head_path(model, name)]
    _unpin_eval(model)
    for pname, param in model.named_parameters():
        param.requires_grad_(any(_is_within(pname, root) for root in keep))
    # BN with parameters follows its own parameters; Dropout (and BN without affine
    # parameters) follows the last module with parameters before it.
    params = list(model.parameters())
    last_trainable = bool(params) and params[0].requires_grad
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if own:
            last_trainable = own[0].requires_grad
        if isinstance(module, _EVAL_PINNED_TYPES) and not last_trainable:
            _pin_eval(module)
    model.train(model.training)  # re-apply the current mode through the pins


def freeze_backbone(model: nn.Module, name: str) -> nn.Module:
    """Freeze everything but the head (in place; returns the model)."""
    drop_aux_head(model)
    _set_trainable(model, name, [])
    return model


def set_trainable_blocks(model: nn.Module, name: str, n: Optional[int]) -> nn.Module:
    """Leave only the last ``n`` blocks and the head trainable (None: everything trainable)."""
    if n is None:
        _unpin_eval(model)
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    n = int(n)
    if n < 0:
        raise ValueError(f"model.trainable_blocks must be >= 0 or null, got {n}")
    blocks = list_blocks(model, name)
    if n >= len(blocks):
        log.info("%s: trainable_blocks=%d >= its %d blocks: the whole network trains", name, n, len(blocks))
        return set_trainable_blocks(model, name, None)
    drop_aux_head(model)
    blocks = list_blocks(model, name)  # without AuxLogits
    chosen = blocks[len(blocks) - n:] if n else []
    _set_trainable(model, name, [p for b in chosen for p in b.modules])
    return model


def _has_conv(model: nn.Module, block: Block) -> bool:
    return any(isinstance(m, _CONV_TYPES) for p in block.modules for m in model.get_submodule(p).modules())


def set_trainable_conv_blocks(model: nn.Module, name: str, n: int) -> nn.Module:
    """Leave the last ``n`` blocks that hold a convolution trainable, with every block after
    them and the head (see the module docstring); ``n`` >= their number trains everything."""
    n = int(n)
    if n < 0:
        raise ValueError(f"model.trainable_conv_blocks must be >= 0 or null, got {n}")
    blocks = list_blocks(model, name)
    conv = [i for i, b in enumerate(blocks) if _has_conv(model, b)]
    if n >= len(conv):
        log.info("%s: trainable_conv_blocks=%d >= its %d convolutional blocks: the whole network trains",
                 name, n, len(conv))
        return set_trainable_blocks(model, name, None)
    first = conv[len(conv) - n] if n else conv[-1] + 1  # 0: only what follows the last one
    return set_trainable_blocks(model, name, len(blocks) - first)


