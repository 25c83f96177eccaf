"""How a run differs from the published protocol its model is compared with.

The leaderboard puts the test accuracy Gavas & Olpadkar (2021, Table 2) report for a model
beside each run of that model. The difference means something only when the run followed
their recipe (ImageNet weights, 224/299 px, SGD lr 1e-3 momentum 0.9, StepLR(7, 0.1), 25
epochs, batch 32, flips + 60 degree rotations, 64/24/12 split). The recipe is
``experiment=gavas2021`` itself, so a run's resolved config is compared with that experiment
composed for the same model, on the keys that change results, and every difference is
named: ``trainer.epochs=8 (paper: 25)``.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

PROTOCOL_EXPERIMENT = "gavas2021"  # the recipe when a config names none (its Table 2 is the leaderboard's)


def recipe_of(cfg: DictConfig) -> str:
    """The experiment whose recipe a run is compared with (``recipe.experiment``, else gavas2021)."""
    return OmegaConf.select(cfg, "recipe.experiment", default=None) or PROTOCOL_EXPERIMENT
# The config keys (dotted) that make up the recipe; whole groups are compared key by key.
PROTOCOL_KEYS = (
    "data.kind", "data.split_mode", "data.split_fractions", "data.split_rounding", "data.geometry",
    "data.crop_fraction", "data.classes", "data.class_map",
    "data.mean", "data.std", "data.augment",
    "model.pretrained", "model.weights", "model.head_hidden", "model.head_dropout",
    "model.freeze_backbone", "model.trainable_blocks",
    "optim", "sched",
    "trainer.epochs", "trainer.max_batches", "trainer.batch_size", "trainer.label_smoothing",
    "trainer.class_weights", "trainer.sampler",
)


def protocol_deviations(cfg: DictConfig, *, precision: str | None = None) -> list[str] | None:
    """The differences between a run's config and the published protocol for its model
    (``[]``: it follows it), or None when the protocol cannot be composed for it.

    ``precision`` (``fp32`` / ``bf16``): what the run actually trained in, which ``trainer.amp=null``
    leaves to the device (bf16 on a GPU); the paper trained in fp32."""
    from bench.models import get_model_spec

    recipe = recipe_of(cfg)
    try:
        ref = _reference(recipe, cfg.model.name)
        input_size = get_model_spec(cfg.model.name).input_size
    except Exception as exc:  # e.g. a model with no config node: no verdict rather than a wrong one
        log.debug("no protocol comparison for %s: %s", cfg.model.name, exc)
        return None
    # What the harness always does differently from this paper (declared in the experiment file).
    found = list(OmegaConf.select(cfg, "recipe.departures", default=None) or [])
    for key in PROTOCOL_KEYS:
        ours, theirs = _flat(OmegaConf.select(cfg, key), key), _flat(OmegaConf.select(ref, key), key)
        for sub in sorted(set(ours) | set(theirs)):
            if ours.get(sub) != theirs.get(sub):
                found.append(f"{sub}={_text(ours.get(sub))} (paper: {_text(theirs.get(sub))})")
    size = cfg.data.image_size or input_size  # null means the model's own size, as in the paper
    paper_size = ref.data.image_size or input_size
    if size != paper_size:
        found.append(f"data.image_size={size} (paper: {paper_size})")
    found += _weights_deviation(cfg, ref)
    if precision is not None:
        paper = "bf16" if ref.trainer.amp else "fp32"
        if precision != paper:
            found.append(f"precision={precision} (paper: {paper})")
    return found


@functools.lru_cache(maxsize=64)
def _reference_container(recipe: str, model: str) -> str:
    from bench.config import compose_config

    return OmegaConf.to_yaml(compose_config([f"experiment={recipe}", f"model={model}", "data.root=unused"]))


def _reference(recipe: str, model: str) -> DictConfig:
    """The recipe composed for ``model`` (cached per process: a sweep compares every run with it)."""
    return OmegaConf.create(_reference_container(recipe, model))


def _weights_deviation(cfg: DictConfig, ref: DictConfig) -> list[str]:
    """The ImageNet weights compared by what they resolve to (``null`` is the latest, which for
    resnet50 is IMAGENET1K_V2 but for alexnet the only one, V1)."""
    if not (cfg.model.pretrained and ref.model.pretrained) or cfg.model.weights:
        return []  # model.pretrained / model.weights differ already, or a local start
    from bench.models.weights import resolved_weights_tag

    try:
        ours = resolved_weights_tag(cfg.model.name, cfg.model.get("weights_tag"))
        theirs = resolved_weights_tag(cfg.model.name, ref.model.get("weights_tag"))
    except Exception as exc:  # an unknown tag is reported by the preflight
        return [f"model.weights_tag={cfg.model.get('weights_tag')} ({exc})"]
    return [] if ours == theirs else [f"model.weights_tag={ours} (paper: {theirs})"]


def _flat(value: Any, key: str) -> dict[str, Any]:
    """``{dotted key: leaf}`` for a config node or a single value."""
    if isinstance(value, DictConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{key}.{k}"))
        return out
    return {key: value}


def _text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
