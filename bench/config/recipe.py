"""How a run differs from the published protocol its model is compared with.

The leaderboard puts the test accuracy Gavas & Olpadkar (2021, Table 2) report for a model
beside each run of that model. The difference means something only when the run followed
their recipe (ImageNet weights, 224/299 px, SGD lr 1e-3 momentum 0.9, StepLR(7, 0.1), 25
epochs, batch 32, flips + 60 degree rotations, 64/24/12 split). The recipe is
``experiment=gavas2021`` itself, so a run's resolved config is compared with that experiment
composed for the same model, on every key the schema says can change a result
(:mod:`bench.config.keys`: a new option is compared the day it is added), and every difference
is named: ``trainer.epochs=8 (paper: 25)``; a model the paper did not run is named too:
``model=resnet50 (paper: vgg16, inception_v3)``.

A run's reference is its recipe derived the way the run was: a variant's recipe
(``scratch_vs_pretrained/frozen``) is the experiment composed with that variant, a
cross-validation fold is compared with the recipe's own fold, and a level of the two-level
classifier with the paper's same level, so the keys those derivations set are the protocol,
not departures.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

log = logging.getLogger(__name__)

PROTOCOL_EXPERIMENT = "gavas2021"  # the recipe when a classifier's config names none (its Table 2 is the leaderboard's)


def recipe_of(cfg: DictConfig) -> str | None:
    """The experiment whose recipe a run is compared with: ``recipe.experiment``, else gavas2021 for
    a classifier; None for a detector whose experiment names no recipe (no published one to compare with)."""
    from bench.config import DETECTION_KINDS

    named = OmegaConf.select(cfg, "recipe.experiment", default=None)
    if named:
        return named
    return None if OmegaConf.select(cfg, "data.kind", default=None) in DETECTION_KINDS else PROTOCOL_EXPERIMENT


# The keys compared are the schema's (bench.config.protocol_keys: every key that can change a result);
# these three are compared apart, by what they mean rather than by their text: the model by the
# paper's list of models, a null image size as the model's own, the weights by the tag they resolve to.
_APART = frozenset({"model.name", "data.image_size", "model.weights_tag"})
# A declared departure written as found ones are, "KEY=VALUE (paper: ...)", holds only while the
# run's KEY has that VALUE: "model.weights=none (paper: ImageNet weights)" is lifted by model.weights=PATH;
# "KEY=A|B (paper: ...)" while it has one of them (a departure of some of an experiment's models).
_CONDITIONAL = re.compile(r"(?P<key>[A-Za-z_]\w*(?:\.\w+)+)=(?P<value>\S+) \(paper: ")


@functools.lru_cache(maxsize=1)
def compared_keys() -> tuple[str, ...]:
    from bench.config import protocol_keys

    return tuple(k for k in protocol_keys() if k not in _APART)


def protocol_deviations(cfg: DictConfig, *, precision: str | None = None, model: str | None = None) -> list[str] | None:
    """The differences between a run's config and the published protocol for its model
    (``[]``: it follows it), or None when the protocol cannot be composed for it.

    ``precision`` (``fp32`` / ``bf16``): what the run actually trained in, which ``trainer.amp=null``
    leaves to the device (bf16 on a GPU); the paper trained in fp32. Without it, an explicit
    ``trainer.amp`` is the precision. ``model``: the run's model when it is not ``model.name`` (an
    SVM run's feature extractor)."""
    from bench.models import get_model_spec

    recipe, model = recipe_of(cfg), model or cfg.model.name
    if recipe is None:
        return None
    try:
        ref = _as_level(cfg, _as_fold(cfg, _reference(recipe, model)))
        input_size = get_model_spec(model).input_size
    except Exception as exc:  # e.g. a model with no config node: no verdict rather than a wrong one
        log.debug("no protocol comparison for %s: %s", model, exc)
        return None
    # What the harness always does differently from this paper (declared in the experiment file).
    found, declared_keys = _declared(cfg)
    found += _model_deviation(model, recipe)
    for key in compared_keys():
        ours, theirs = _flat(OmegaConf.select(cfg, key), key), _flat(OmegaConf.select(ref, key), key)
        for sub in sorted(set(ours) | set(theirs)):
            if ours.get(sub) != theirs.get(sub) and not _governed(sub, declared_keys):
                found.append(f"{sub}={_text(ours.get(sub))} (paper: {_text(theirs.get(sub))})")
    size = cfg.data.image_size or input_size  # null means the model's own size, as in the paper
    paper_size = ref.data.image_size or input_size
    if size != paper_size:
        found.append(f"data.image_size={size} (paper: {paper_size})")
    found += _weights_deviation(cfg, ref, model)
    if precision is None and OmegaConf.select(cfg, "trainer.amp", default=None) is not None:
        precision = "bf16" if cfg.trainer.amp else "fp32"
    if precision is not None:
        paper = "bf16" if ref.trainer.amp else "fp32"
        if precision != paper:
            found.append(f"precision={precision} (paper: {paper})")
    return found


def _model_deviation(model: str, recipe: str) -> list[str]:
    """``model=X (paper: A, B)`` when the paper did not run this model (a long list is counted)."""
    try:
        models = paper_models(recipe)
    except Exception as exc:  # a recipe that cannot be composed has no verdict on its models either
        log.debug("no model list for recipe %s: %s", recipe, exc)
        return []
    if model in models:
        return []
    listed = ", ".join(models) if len(models) <= 4 else f"one of the {len(models)} models of experiment={recipe}"
    return [f"model={model} (paper: {listed})"]


@functools.lru_cache(maxsize=16)
def paper_models(recipe: str) -> tuple[str, ...]:
    """The models a recipe's paper ran: ``recipe.models``, else the experiment's sweep list
    (``hydra.sweeper.params`` model or model.name), else the one model the experiment composes."""
    from bench.config import compose_config

    cfg = compose_config([*_recipe_overrides(recipe), "data.root=unused"], return_hydra_config=True)
    listed = OmegaConf.select(cfg, "recipe.models", default=None)
    if listed:
        return tuple(str(m) for m in listed)
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}
    for key in ("model", "model.name"):
        if params.get(key):
            return tuple(m.strip() for m in str(params[key]).split(",") if m.strip())
    return (str(cfg.model.name),)


def _recipe_overrides(recipe: str) -> list[str]:
    """``EXP`` is experiment=EXP; ``EXP/VARIANT`` (what a conf/variant/ file names as its recipe)
    is experiment=EXP with variant=VARIANT: a frozen run is compared with the frozen recipe."""
    experiment, _, variant = recipe.partition("/")
    return [f"experiment={experiment}", *([f"variant={variant}"] if variant else [])]


@functools.lru_cache(maxsize=64)
def _reference_container(recipe: str, model: str) -> str:
    from bench.config import compose_config

    return OmegaConf.to_yaml(compose_config([*_recipe_overrides(recipe), f"model={model}", "data.root=unused"]))


def _reference(recipe: str, model: str) -> DictConfig:
    """The recipe composed for ``model`` (cached per process: a sweep compares every run with it)."""
    return OmegaConf.create(_reference_container(recipe, model))


def _as_fold(cfg: DictConfig, ref: DictConfig) -> DictConfig:
    """For a cross-validation fold (bench-cv sets data.split_mode, n_folds, fold, split_fractions
    and resets cv.*), the recipe's own fold; a recipe without cross-validation stays as it is,
    so a fold of it is a departure."""
    if cfg.data.split_mode == "holdout" and cfg.data.fold is None:
        return ref
    from bench.config.plans import plan_folds

    try:
        return plan_folds(ref)[0].cfg  # the folds differ only in data.fold, which is not compared
    except ValueError:
        return ref


def _as_level(cfg: DictConfig, ref: DictConfig) -> DictConfig:
    """For a level of the two-level classifier (its data.classes / class_map derived from
    two_level.groups), the paper's same level; a level the paper has not gets no classes there.
    ``ref`` is this call's own (created from the cached text), so it is updated in place."""
    from bench.config.plans import level_selections

    if not OmegaConf.select(cfg, "two_level.enabled", default=False):
        return ref
    try:
        ours = level_selections(cfg.two_level.groups)
        theirs = level_selections(ref.two_level.groups) if ref.two_level.enabled else {}
    except ValueError:  # a grouping that cannot run: the preflight says why
        return ref
    selection = {k: _plain(cfg.data.get(k)) for k in ("classes", "class_map")}
    level = next((name for name, keys in ours.items() if keys == selection), None)
    if level is None:  # the composed classifier, not one of its levels
        return ref
    for key, value in theirs.get(level, {"classes": None, "class_map": None}).items():
        OmegaConf.update(ref, f"data.{key}", value, merge=False)
    return ref


def _declared(cfg: DictConfig) -> tuple[list[str], set[str]]:
    """The experiment's declared departures that hold for this run, and the keys the conditional
    ones speak for (their own words on the paper replace the comparison of that key). A
    declaration on model.name speaks for a model's head, never for whether the paper ran the
    model: that is always compared (:func:`_model_deviation`)."""
    holding, keys = [], set()
    for text in OmegaConf.select(cfg, "recipe.departures", default=None) or []:
        match = _CONDITIONAL.match(str(text))
        if match is None:
            holding.append(str(text))
            continue
        keys.add(match["key"])
        if _text(_plain(OmegaConf.select(cfg, match["key"]))) in match["value"].split("|"):
            holding.append(str(text))
    return holding, keys


def _governed(key: str, declared_keys: set[str]) -> bool:
    return any(key == k or key.startswith(f"{k}.") for k in declared_keys)


def _weights_deviation(cfg: DictConfig, ref: DictConfig, model: str) -> list[str]:
    """The ImageNet weights compared by what they resolve to (``null`` is the latest, which for
    resnet50 is IMAGENET1K_V2 but for alexnet the only one, V1)."""
    if not (cfg.model.pretrained and ref.model.pretrained) or cfg.model.weights:
        return []  # model.pretrained / model.weights differ already, or a local start
    from bench.models.weights import resolved_weights_tag

    try:
        ours = resolved_weights_tag(model, cfg.model.get("weights_tag"))
        theirs = resolved_weights_tag(model, ref.model.get("weights_tag"))
    except Exception as exc:  # an unknown tag is reported by the preflight
        return [f"model.weights_tag={cfg.model.get('weights_tag')} ({exc})"]
    return [] if ours == theirs else [f"model.weights_tag={ours} (paper: {theirs})"]


def _flat(value: Any, key: str) -> dict[str, Any]:
    """``{dotted key: leaf}`` for a config node or a single value."""
    value = _plain(value)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{key}.{k}"))
        return out
    return {key: value}


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def _text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):  # [rbf, cubic], as written on the command line
        return "[" + ", ".join(_text(v) for v in value) + "]"
    return str(value)
