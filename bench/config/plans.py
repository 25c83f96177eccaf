"""The configs a protocol derives from an experiment's config, defined with the configuration
because the recipe comparison (:mod:`.recipe`) derives the paper's own in the same way:

- cross-validation (``bench-cv``): one config per fold or Monte Carlo repetition (``plan_folds``),
  each with its own experiment folder and the split keys of its fold;
- the two-level classifier (Cheuque et al. 2022): the level-1 config and one level-2 config per
  group (``level_configs``), their classes and class map derived from ``two_level.groups``.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from bench.config.schema import CvConfig

log = logging.getLogger("bench.config")


# --------------------------------------------------------------------------- cross-validation
@dataclass
class FoldPlan:
    index: int  # fold (k-fold) or repetition (Monte Carlo), 0-based
    experiment_name: str  # <experiment>/kfold10/fold03 or <experiment>/mc30/rep03
    cfg: DictConfig  # the fold's full config


# --------------------------------------------------------------------------- planning
def cv_scheme(cfg: DictConfig) -> tuple[str, int]:
    """("kfold", K) or ("montecarlo", R) from ``cfg.cv``; ValueError naming the fix otherwise."""
    folds, repeats = cfg.cv.folds, cfg.cv.repeats
    if folds and repeats:
        raise ValueError(f"cv.folds={folds} and cv.repeats={repeats} are both set; choose k-fold (cv.folds=K) "
                         "or Monte Carlo cross-validation (cv.repeats=R).")
    if folds:
        if folds < 2:
            raise ValueError(f"cv.folds={folds}: k-fold cross-validation needs at least 2 folds.")
        return "kfold", int(folds)
    if repeats:
        if repeats < 1:
            raise ValueError(f"cv.repeats={repeats} must be at least 1.")
        if not 0 < cfg.cv.test_fraction < 1:
            raise ValueError(f"cv.test_fraction={cfg.cv.test_fraction} must lie strictly between 0 and 1.")
        return "montecarlo", int(repeats)
    raise ValueError("no cross-validation configured: set cv.folds=K (stratified k-fold) or cv.repeats=R "
                     "(Monte Carlo, cv.test_fraction in test), or pick an experiment that sets one.")


def montecarlo_fractions(split_fractions: Sequence[float], test_fraction: float) -> list[float]:
    """Train, val, test fractions: ``test_fraction`` in test, the rest in the train:val ratio of
    ``split_fractions`` (validation carved from the training share for best-epoch selection)."""
    f_train, f_val = float(split_fractions[0]), float(split_fractions[1])
    rest = 1.0 - float(test_fraction)
    return [round(rest * f_train / (f_train + f_val), 10), round(rest * f_val / (f_train + f_val), 10),
            float(test_fraction)]


def scheme_name(cfg: DictConfig) -> str:
    """Folder name of the scheme: ``kfold10`` or ``mc30`` (test percentage)."""
    mode, n = cv_scheme(cfg)
    return f"kfold{n}" if mode == "kfold" else f"mc{100 * cfg.cv.test_fraction:g}"


def plan_folds(cfg: DictConfig) -> list[FoldPlan]:
    """One config per fold / repetition (all of them, also when ``cv.fold`` picks one to run)."""
    mode, n = cv_scheme(cfg)
    name = scheme_name(cfg)
    if cfg.data.kind == "bloodmnist":
        raise ValueError("data=bloodmnist comes with official splits; cross-validation needs data=imagefolder "
                         "(e.g. the PBC folders) or data=synthetic.")
    fractions = (montecarlo_fractions(cfg.data.split_fractions, cfg.cv.test_fraction) if mode == "montecarlo"
                 else list(cfg.data.split_fractions))
    plans = []
    for i in range(n):
        exp_name = f"{cfg.experiment_name}/{name}/{'fold' if mode == 'kfold' else 'rep'}{i:02d}"
        fold_cfg = copy.deepcopy(cfg)
        OmegaConf.update(fold_cfg, "experiment_name", exp_name)
        OmegaConf.update(fold_cfg, "data.split_mode", mode)
        OmegaConf.update(fold_cfg, "data.n_folds", n if mode == "kfold" else None)
        OmegaConf.update(fold_cfg, "data.fold", i)
        OmegaConf.update(fold_cfg, "data.split_fractions", fractions, merge=False)
        # The fold is described by the data keys; the cv keys (how many repetitions, which one to
        # run now) must not change its identity, or e.g. cv.repeats=3 after 2 would redo rep 0 and 1.
        for key, value in asdict(CvConfig()).items():
            OmegaConf.update(fold_cfg, f"cv.{key}", value)
        plans.append(FoldPlan(i, exp_name, fold_cfg))
    return plans


# --------------------------------------------------------------------------- the two-level classifier
def validate_groups(groups) -> dict[str, list[str]]:
    """``two_level.groups`` as a plain dict; ValueError for a grouping that cannot work."""
    groups = {str(g): [str(c) for c in members] for g, members in dict(groups or {}).items()}
    if len(groups) < 2:
        raise ValueError(f"two_level.groups={groups} needs at least two groups for the level-1 classifier.")
    seen: dict[str, str] = {}
    for g, members in groups.items():
        if not members:
            raise ValueError(f"two_level.groups.{g} is empty; every group needs at least one class.")
        if "/" in g or g.startswith("."):
            raise ValueError(f"two_level group name {g!r} is used as a folder name; avoid '/' and a leading '.'.")
        for c in members:
            if c in seen:
                raise ValueError(f"class {c!r} is in two groups ({seen[c]!r} and {g!r}).")
            seen[c] = g
    return groups


def level_experiment(cfg: DictConfig, level: str) -> str:
    return f"{cfg.experiment_name}/levels/{level}"


def level_selections(groups) -> dict[str, dict[str, Any]]:
    """``{level: {"classes": ..., "class_map": ...}}``: the data keys each level's run gets from
    the groups (level1, then level2-<group> per group of two or more classes). The protocol
    check (bench/config/recipe.py) derives the paper's levels with it too: these keys are the
    two-level protocol, not a run's departures."""
    groups = validate_groups(groups)
    grouped = [c for members in groups.values() for c in members]
    out = {"level1": {"classes": grouped, "class_map": {c: g for g, members in groups.items() for c in members}}}
    out.update({f"level2-{g}": {"classes": members, "class_map": None}
                for g, members in groups.items() if len(members) > 1})
    return out


def level_configs(cfg: DictConfig) -> tuple[DictConfig, dict[str, DictConfig]]:
    """The level-1 config and one level-2 config per group of two or more classes."""
    selections = level_selections(cfg.two_level.groups)
    if cfg.data.classes or cfg.data.class_map:
        log.warning("two_level: data.classes / data.class_map are set by the groups; the given values are ignored")

    def derive(level: str) -> DictConfig:
        out = copy.deepcopy(cfg)
        OmegaConf.update(out, "experiment_name", level_experiment(cfg, level))
        for key, value in selections[level].items():
            OmegaConf.update(out, f"data.{key}", value, merge=False)
        return out

    level2 = {level.removeprefix("level2-"): derive(level) for level in selections if level != "level1"}
    return derive("level1"), level2
