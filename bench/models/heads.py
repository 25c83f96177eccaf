"""Heads and freezing: an MLP head in place of the family's head, a frozen backbone, or
only the last N blocks trainable (``model.head_hidden``, ``model.head_dropout``,
``model.freeze_backbone``, ``model.trainable_blocks``; :func:`configure_model` applies
them right after :func:`~bench.models.create_model`).

The head
--------
The *head* is the layer the registry replaced with a fresh ``num_classes``-way layer, at
the path its :class:`~bench.models.ModelSpec` names (``spec.head``, registered with each
model in :mod:`bench.models.torchvision_zoo`, :mod:`~bench.models.custom`, ...):
``classifier.6`` for VGG/AlexNet, ``fc`` for ResNet/ResNeXt/WRN/GoogLeNet/Inception v3,
``classifier`` for DenseNet, ``classifier.1`` for MobileNetV2/SqueezeNet; for
``timm/<name>`` the module named by ``pretrained_cfg["classifier"]``; for a model
registered without one the last ``nn.Linear``.

:func:`apply_head` replaces it by ``Linear(in, h1) -> ReLU -> [Dropout(p)] -> ... ->
Linear(h_k, num_classes)`` (Kaiming-initialised like every new head), reading the same
features the family head read: VGG16 4096 (the output of fc7) -> 1024 -> classes,
Inception v3 pooled 2048 -> 1024 -> classes, ResNet50 2048 -> 256 -> classes.
``head_hidden=[]`` keeps the family head. SqueezeNet's head is a 1x1 convolution and
takes no MLP.

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

Frozen means frozen
-------------------
Frozen parameters get ``requires_grad=False`` (``bench.fit.prepare`` builds the optimizer
over the trainable ones), and BatchNorm and Dropout layers inside frozen blocks stay in eval
mode even while the model trains (their ``train()`` is pinned to eval), so a frozen
backbone's BN running statistics do not drift and its features are deterministic, as
with Keras' ``trainable=False``.

Inception v3's auxiliary classifier is removed whenever the head is an MLP or any part
of the network is frozen: those protocols (Keras' InceptionV3 with a custom top) have no
auxiliary head, and a frozen, randomly initialised one would only add noise to the loss.
The model then returns logits in train mode too, so the loss is the main head's alone.

Rebuilding from a checkpoint
----------------------------
A ``best.pt`` of a run with an MLP head has keys such as ``fc.0.weight`` and no
``AuxLogits.*``; :func:`match_state_dict` reshapes a freshly created model (head widths
read from the tensors) so that ``load_state_dict`` fits.
"""

from __future__ import annotations

import logging
import re
import types
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from torch import nn

from ._layers import init_head_
from ._registry import get_model_spec

log = logging.getLogger(__name__)

_POOL_STAGED = {"vgg", "alexnet", "squeezenet"}  # conv stages of `features` end at a MaxPool
_EXPANDED_CONTAINERS = {"features", "blocks", "stages", "layers"}
_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
_EVAL_PINNED_TYPES = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


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


# --------------------------------------------------------------------------- heads
def _mlp(in_features: int, hidden: Sequence[int], num_classes: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [init_head_(nn.Linear(width, int(h))), nn.ReLU(inplace=True)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = int(h)
    layers.append(init_head_(nn.Linear(width, num_classes)))
    head = nn.Sequential(*layers)
    head._bench_mlp_head = True  # lets head_path find the whole MLP again
    return head


def _head_in_features(head: nn.Module, name: str) -> int:
    if isinstance(head, nn.Linear):
        return head.in_features
    if getattr(head, "_bench_mlp_head", False):
        return next(m for m in head.modules() if isinstance(m, nn.Linear)).in_features
    raise ValueError(
        f"{name}: an MLP head (model.head_hidden) needs a Linear classification head; "
        f"{name}'s head is a {type(head).__name__}. Use model.head_hidden=[] for this model."
    )


def apply_head(model: nn.Module, name: str, num_classes: int, hidden: Sequence[int], dropout: float = 0.0) -> nn.Module:
    """Replace the head of ``model`` by an MLP with ``hidden`` widths (in place; returns it).

    ``hidden=[]`` keeps the family head. Dropout ``dropout`` follows each hidden ReLU.
    """
    hidden = [int(h) for h in hidden or []]
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"model.head_dropout must be in [0, 1), got {dropout}")
    if any(h < 1 for h in hidden):
        raise ValueError(f"model.head_hidden widths must be >= 1, got {hidden}")
    if not hidden:
        if dropout:
            log.warning("%s: model.head_dropout=%s is ignored without model.head_hidden", name, dropout)
        return model
    path = head_path(model, name)
    old = model.get_submodule(path)
    in_features = _head_in_features(old, name)
    head = _mlp(in_features, hidden, num_classes, float(dropout))
    ref = next(old.parameters(), None)
    if ref is not None:  # the old head's device and dtype (meta, GPU, half)
        head.to(device=ref.device, dtype=ref.dtype)
    model.set_submodule(path, head)
    drop_aux_head(model)
    return model


def drop_aux_head(model: nn.Module) -> bool:
    """Remove Inception v3's auxiliary classifier (see the module docstring); True if removed."""
    if getattr(model, "AuxLogits", None) is None:
        return False
    model.AuxLogits = None
    model.aux_logits = False
    return True


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


# --------------------------------------------------------------------------- config / checkpoints
def configure_model(model: nn.Module, model_cfg: Any, *, num_classes: int) -> nn.Module:
    """Apply ``model.head_hidden`` / ``head_dropout`` / ``freeze_backbone`` / ``trainable_blocks``
    of ``model_cfg`` to a model from ``create_model`` (a no-op with the defaults).

    A local ``model.weights`` checkpoint is loaded again after an MLP head is installed, so a
    checkpoint with the same head restores it (create_model loaded it before the head existed).
    """
    name = model_cfg.name
    hidden = list(getattr(model_cfg, "head_hidden", None) or [])
    dropout = float(getattr(model_cfg, "head_dropout", 0.0) or 0.0)
    freeze = bool(getattr(model_cfg, "freeze_backbone", False))
    blocks = getattr(model_cfg, "trainable_blocks", None)
    if freeze and blocks not in (None, 0):
        raise ValueError(
            f"model.freeze_backbone=true and model.trainable_blocks={blocks} contradict each other; "
            "freeze_backbone=true means trainable_blocks=0. Set one of them."
        )
    if hidden:
        apply_head(model, name, num_classes, hidden, dropout)
        weights = getattr(model_cfg, "weights", None)
        if weights:
            from .weights import format_load_report, load_local_weights

            log.info("%s (with its MLP head): %s", name, format_load_report(load_local_weights(model, weights)))
    elif dropout:
        log.warning("%s: model.head_dropout=%s is ignored without model.head_hidden", name, dropout)
    if freeze:
        freeze_backbone(model, name)
    elif blocks is not None:
        set_trainable_blocks(model, name, blocks)
    if freeze or blocks is not None:
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in model.parameters())
        log.info("%s: %.2fM of %.2fM parameters trainable", name, n_train / 1e6, n_all / 1e6)
    return model


_MLP_KEY = re.compile(r"^(?P<path>.+)\.(?P<idx>\d+)\.weight$")


def match_state_dict(model: nn.Module, name: str, state: Mapping[str, Any]) -> nn.Module:
    """Reshape a fresh ``create_model(name, ...)`` so that ``state`` (a best.pt's ``model``)
    loads: rebuild an MLP head from its tensors' shapes, drop an auxiliary head the state
    lacks. Dropout probabilities do not matter for inference. In place; returns the model.
    """
    if any(k.startswith("AuxLogits.") for k in model.state_dict()) and not any(
        k.startswith("AuxLogits.") for k in state
    ):
        drop_aux_head(model)
    path = head_path(model, name)
    linears = sorted(
        (int(m["idx"]), tuple(v.shape))
        for k, v in state.items()
        if (m := _MLP_KEY.match(k)) and m["path"] == path and len(v.shape) == 2
    )
    if len(linears) >= 2:  # an MLP head: Linear at indices i0 < i1 < ...
        hidden = [shape[0] for _, shape in linears[:-1]]
        num_classes = linears[-1][1][0]
        dropout = 0.5 if any(b - a == 3 for (a, _), (b, _) in zip(linears, linears[1:])) else 0.0
        apply_head(model, name, num_classes, hidden, dropout)
    return model
