"""Heads: an MLP head in place of the family's head, optionally reading an earlier layer
(``model.head_hidden``, ``model.head_dropout``, ``model.head_keep_fc``), and the freezing
options on top (:mod:`bench.models.blocks`); :func:`configure_model` applies them all right
after :func:`~bench.models.create_model`.

The MLP head
------------
:func:`apply_head` replaces the head (found by :func:`~bench.models.blocks.head_path`) by
``Linear(in, h1) -> ReLU -> [Dropout(p)] -> ... -> Linear(h_k, num_classes)``
(Kaiming-initialised like every new head), reading the same features the family head read:
VGG16 4096 (the output of fc7) -> 1024 -> classes, Inception v3 pooled 2048 -> 1024 ->
classes, ResNet50 2048 -> 256 -> classes. ``head_hidden=[]`` keeps the family head.
SqueezeNet's head is a 1x1 convolution and takes no MLP.

Where the head reads from
-------------------------
``head_keep_fc=N`` keeps only the first N of the fully connected layers the family has
before its head (VGG and AlexNet: fc6, fc7, each with its ReLU and Dropout), and the new head
reads the output of the last one kept; ``0`` reads the flattened convolutional features
(VGG: the 7x7x512 map, 25,088 values). ``null`` keeps them all. VGG16 with
``head_keep_fc=1, head_hidden=[1024]`` is Acevedo et al.'s (2019, Fig. 8) 25088 -> 4096
(ImageNet fc6) -> 1024 -> classes. Families without fully connected layers before the head
(ResNet, DenseNet, Inception, ...) have nothing to drop: any N leaves them as they are.

Inception v3's auxiliary classifier is removed whenever the head is replaced
(:func:`~bench.models._layers.drop_aux_head`).

Rebuilding from a checkpoint
----------------------------
``best.pt`` records the head the run trained (``head``: hidden widths, dropout, keep_fc;
:func:`head_record`) and :func:`match_state_dict` rebuilds it on a freshly created model, so
``load_state_dict`` fits. A ``best.pt`` written before that record existed is read from its
tensors: keys such as ``fc.0.weight`` give the widths, a missing ``AuxLogits.*`` the
removed auxiliary head.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Mapping, Optional, Sequence

from torch import nn

from ._layers import drop_aux_head, init_head_
from .blocks import freeze_backbone, head_path, set_trainable_blocks, set_trainable_conv_blocks

log = logging.getLogger(__name__)


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


def _cut_before(model: nn.Module, path: str, keep_fc: Optional[int]) -> tuple[str, Optional[int]]:
    """Where the new head goes and the width it reads, after dropping all but the first
    ``keep_fc`` fully connected layers before the head in its container (VGG's classifier).
    Returns (path, None) when there is nothing to drop."""
    parent_path, _, leaf = path.rpartition(".")
    if keep_fc is None or not parent_path or not leaf.isdigit():
        return path, None
    parent = model.get_submodule(parent_path)
    children = list(parent.children())
    fcs = [i for i, m in enumerate(children[: int(leaf)]) if isinstance(m, nn.Linear)]
    if int(keep_fc) >= len(fcs):
        return path, None
    cut = fcs[int(keep_fc)]
    model.set_submodule(parent_path, nn.Sequential(*children[:cut]))
    return f"{parent_path}.{cut}", children[cut].in_features


def apply_head(model: nn.Module, name: str, num_classes: int, hidden: Sequence[int], dropout: float = 0.0,
               keep_fc: Optional[int] = None) -> nn.Module:
    """Replace the head of ``model`` by an MLP with ``hidden`` widths, reading the last of the
    first ``keep_fc`` fully connected layers before it (in place; returns it).

    ``hidden=[]`` with ``keep_fc`` null keeps the family head. Dropout ``dropout`` follows each
    hidden ReLU.
    """
    hidden = [int(h) for h in hidden or []]
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"model.head_dropout must be in [0, 1), got {dropout}")
    if any(h < 1 for h in hidden):
        raise ValueError(f"model.head_hidden widths must be >= 1, got {hidden}")
    if keep_fc is not None and int(keep_fc) < 0:
        raise ValueError(f"model.head_keep_fc must be >= 0 or null, got {keep_fc}")
    path = head_path(model, name)
    old = model.get_submodule(path)
    new_path, cut_width = _cut_before(model, path, keep_fc)
    if not hidden and cut_width is None:
        if dropout:
            log.warning("%s: model.head_dropout=%s is ignored without model.head_hidden", name, dropout)
        return model
    head = _mlp(cut_width or _head_in_features(old, name), hidden, num_classes, float(dropout))
    ref = next(old.parameters(), None)
    if ref is not None:  # the old head's device and dtype (meta, GPU, half)
        head.to(device=ref.device, dtype=ref.dtype)
    if new_path == path:
        model.set_submodule(path, head)
    else:  # the container was cut short: the head is its new last child
        model.get_submodule(new_path.rpartition(".")[0]).append(head)
    drop_aux_head(model)
    return model


def head_record(model_cfg: Any) -> dict:
    """The head options of a run, as ``best.pt`` records them for :func:`match_state_dict`."""
    keep_fc = getattr(model_cfg, "head_keep_fc", None)
    return {"hidden": [int(h) for h in getattr(model_cfg, "head_hidden", None) or []],
            "dropout": float(getattr(model_cfg, "head_dropout", 0.0) or 0.0),
            "keep_fc": None if keep_fc is None else int(keep_fc)}


# --------------------------------------------------------------------------- config / checkpoints
def _check_freezing(model_cfg: Any) -> tuple[bool, Optional[int], Optional[int]]:
    freeze = bool(getattr(model_cfg, "freeze_backbone", False))
    blocks = getattr(model_cfg, "trainable_blocks", None)
    conv_blocks = getattr(model_cfg, "trainable_conv_blocks", None)
    if freeze and (blocks not in (None, 0) or conv_blocks is not None):
        raise ValueError(
            f"model.freeze_backbone=true and model.trainable_blocks={blocks} / trainable_conv_blocks={conv_blocks} "
            "contradict each other; freeze_backbone=true means trainable_blocks=0. Set one of them."
        )
    if blocks is not None and conv_blocks is not None:
        raise ValueError(
            f"model.trainable_blocks={blocks} and model.trainable_conv_blocks={conv_blocks} both say how much "
            "trains; set one of them (the other null)."
        )
    return freeze, blocks, conv_blocks


def configure_model(model: nn.Module, model_cfg: Any, *, num_classes: int) -> nn.Module:
    """Apply ``model.head_hidden`` / ``head_dropout`` / ``head_keep_fc`` / ``freeze_backbone`` /
    ``trainable_blocks`` / ``trainable_conv_blocks`` of ``model_cfg`` to a model from
    ``create_model`` (a no-op with the defaults).

    A local ``model.weights`` checkpoint is loaded again after a new head is installed, so a
    checkpoint with the same head restores it (create_model loaded it before the head existed).
    """
    name = model_cfg.name
    head = head_record(model_cfg)
    freeze, blocks, conv_blocks = _check_freezing(model_cfg)
    if head["hidden"] or head["keep_fc"] is not None:
        apply_head(model, name, num_classes, head["hidden"], head["dropout"], head["keep_fc"])
        weights = getattr(model_cfg, "weights", None)
        if weights:
            from .weights import format_load_report, load_local_weights

            log.info("%s (with its new head): %s", name, format_load_report(load_local_weights(model, weights)))
    elif head["dropout"]:
        log.warning("%s: model.head_dropout=%s is ignored without model.head_hidden", name, head["dropout"])
    if freeze:
        freeze_backbone(model, name)
    elif blocks is not None:
        set_trainable_blocks(model, name, blocks)
    elif conv_blocks is not None:
        set_trainable_conv_blocks(model, name, conv_blocks)
    if freeze or blocks is not None or conv_blocks is not None:
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in model.parameters())
        log.info("%s: %.2fM of %.2fM parameters trainable", name, n_train / 1e6, n_all / 1e6)
    return model


_MLP_KEY = re.compile(r"^(?P<path>.+)\.(?P<idx>\d+)\.weight$")


def match_state_dict(model: nn.Module, name: str, state: Mapping[str, Any], head: Optional[Mapping] = None
                     ) -> nn.Module:
    """Reshape a fresh ``create_model(name, ...)`` so that ``state`` (a best.pt's ``model``)
    loads: the head ``head`` (best.pt's record, :func:`head_record`) or, for a checkpoint
    without one, an MLP head rebuilt from its tensors' shapes; an auxiliary head the state
    lacks is dropped. Dropout probabilities do not matter for inference. In place; returns the model.
    """
    if any(k.startswith("AuxLogits.") for k in model.state_dict()) and not any(
        k.startswith("AuxLogits.") for k in state
    ):
        drop_aux_head(model)
    num_classes = _num_classes(model, name)
    if head is not None:
        if head.get("hidden") or head.get("keep_fc") is not None:
            apply_head(model, name, num_classes, head.get("hidden") or [], float(head.get("dropout") or 0.0),
                       head.get("keep_fc"))
        return model
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


def _num_classes(model: nn.Module, name: str) -> int:
    head = model.get_submodule(head_path(model, name))
    last = [m for m in head.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    return last.out_features if isinstance(last, nn.Linear) else last.out_channels
