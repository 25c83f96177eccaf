"""Before the first model trains: what will run, and can it run? Also ``bench-fetch-weights``.

A sweep that dies at model 14 because a weight file is missing, or at hour six
because the disk filled up, wastes the night. ``preflight`` checks everything it can
in seconds and reports every problem at once.

``plan_runs`` expands the command line the way Hydra's sweeper will (model and seed
lists on the command line, or the experiment's ``hydra.sweeper.params``), so the
checks cover exactly the runs that will start. The checks live in :mod:`bench.preflight.data`,
:mod:`bench.preflight.models` and :mod:`bench.preflight.resources`.
"""

from __future__ import annotations

import logging

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from bench.config import compose_config
from bench.preflight.data import check_data, check_split_sweep
from bench.preflight.report import Plan, Report
from bench.preflight.models import check_models
from bench.preflight.resources import check_device, check_disk, check_memory

log = logging.getLogger(__name__)

MULTIRUN_FLAGS = ("-m", "--multirun")


# --------------------------------------------------------------------------- planning
def _sweep_values(parser: OverridesParser, key: str, text: str) -> list[str]:
    override = parser.parse_overrides([f"{key}={text}"])[0]
    if override.is_sweep_override():
        return [str(v) for v in override.sweep_string_iterator()]
    return [str(override.value())]


def plan_runs(args: list[str]) -> Plan:
    """Compose the config for ``args`` (a bench-train command line) and list its runs."""
    multirun = any(a in MULTIRUN_FLAGS for a in args)
    parser = OverridesParser.create()
    overrides = parser.parse_overrides([a for a in args if a not in MULTIRUN_FLAGS])
    base, swept, elements = [], {}, {}
    for o in overrides:
        key = o.key_or_group
        if o.is_sweep_override():
            values = [str(v) for v in o.sweep_string_iterator()]
            swept[key], elements[key] = values, o.get_key_element()
            base.append((key, f"{o.get_key_element()}={values[0]}"))
        else:
            base.append((key, o.input_line))
    cfg = compose_config([line for _, line in base], return_hydra_config=True)
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    if multirun:
        given = {key for key, _ in base}
        for key, text in params.items():
            if key not in given:  # the command line's value replaces the experiment's sweep (Hydra's BasicSweeper)
                swept[key] = _sweep_values(parser, key, str(text))
    models = swept.get("model") or swept.get("model.name") or [cfg.model.name]
    seeds = [int(s) for s in swept.get("seed", [cfg.seed])]
    return Plan(cfg=cfg, models=models, seeds=seeds, multirun=multirun, swept=swept,
                overrides=[a for a in args if a not in MULTIRUN_FLAGS],
                variants=_variants(base, swept, elements) if multirun else [])


RUN_KEYS = ("model", "model.name", "seed")  # swept keys the checks go through value by value already


def _variants(base: list[tuple[str, str]], swept: dict[str, list[str]], elements: dict[str, str]):
    """("key=value", overrides) for every value of a swept key that the first run's config lacks:
    the command line's other values, and every value of an experiment file's sweeper params (which
    the first run's config does not hold)."""
    variants = []
    for key, values in swept.items():
        if key in RUN_KEYS:
            continue
        element = elements.get(key, key)
        rest = [line for k, line in base if k != key]
        for value in values[1:] if key in elements else values:
            variants.append((f"{element}={value}", [*rest, f"{element}={value}"]))
    return variants


# --------------------------------------------------------------------------- checks
def preflight(plan: Plan) -> Report:
    """Check data, weights, image sizes, disk and device for every planned run."""
    from bench.config.checks import validate_config

    report = Report()
    cfg = plan.cfg
    report.problems.extend(validate_config(cfg))
    configs = [cfg, *_check_variants(plan, report)]
    from bench.training.loggers import missing_package

    if missing_package(cfg.logger.kind):
        report.problems.append(missing_package(cfg.logger.kind))
    n_images = report.n_images = check_data(cfg, report)
    check_split_sweep(plan, report)
    check_models(plan, report, configs)
    check_disk(plan, report)
    check_memory(plan, report, n_images, configs)
    check_device(cfg, report)
    return report


def _check_variants(plan: Plan, report: Report) -> list[DictConfig]:
    """Compose and validate every other value of the swept keys; returns the configs that compose
    (their image sizes are checked against the models, memory and disk with the first run's).
    A problem the first run's config has too is not repeated."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from bench.config.checks import validate_config

    configs = []
    for override, overrides in plan.variants:
        try:
            variant = compose_config(overrides, return_hydra_config=True)
        except (HydraException, OmegaConfBaseException) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            report.problems.append(f"the swept value {override} does not compose ({first_line}); fix or drop "
                                   "that value.")
            continue
        configs.append(variant)
        key = override.split("=", 1)[0].lstrip("+~")
        for problem in validate_config(variant):
            if problem in report.problems:
                continue
            # A problem of another option that this value brings about (grad_accum > a swept batch_size).
            report.problems.append(problem if problem.startswith(f"{key}=") else f"{problem} (with {override})")
    return configs


# --------------------------------------------------------------------------- bench-fetch-weights
