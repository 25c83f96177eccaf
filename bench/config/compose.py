"""Composing the config: the schema and one ``model/<name>`` node per registered model stored in
Hydra's ConfigStore, ``conf/config.yaml`` composed with overrides, the experiment folder's default
name, and a run's identity (its resolved config and the hash over the keys that change results).
"""

from __future__ import annotations

import functools

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from bench.config import keys as config_keys
from bench.config.keys import expand_user_paths
from bench.config.schema import BenchConfig, ModelConfig


def default_experiment_name(kind: str, root: str = "", bloodmnist_size=None) -> str:
    """The experiment folder name when none is given: named after the data, so a second dataset
    gets its own folder (and split) instead of displacing the first one's results.

    ``synthetic``; ``bloodmnist<size>``; an image folder: its name and 6 hex digits of its absolute
    path (two folders called ``images`` in different places stay apart)."""
    import hashlib
    import os

    if kind == "imagefolder" and root:
        path = os.path.abspath(os.path.expanduser(str(root)))
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in os.path.basename(path.rstrip(os.sep)))
        return f"{name or 'data'}-{hashlib.sha1(path.encode()).hexdigest()[:6]}"
    if kind == "bloodmnist":
        return f"bloodmnist{bloodmnist_size}"
    return str(kind)


# conf/config.yaml: experiment_name: ${bench_experiment_name:${data.kind},...}
OmegaConf.register_new_resolver("bench_experiment_name", default_experiment_name, replace=True)


_REGISTERED: set[str] = set()  # model config nodes stored so far in this process


def register_configs() -> None:
    """Register the schema and one ``model/<name>`` node per registered model (those registered
    since the last call only: storing ~30 structured nodes costs a quarter of a second)."""
    from bench.models import list_models  # models are layer 1; config composes them

    cs = ConfigStore.instance()
    if "bench_schema" not in _REGISTERED or "bench_schema.yaml" not in cs.repo:
        cs.store(name="bench_schema", node=BenchConfig)
        _REGISTERED.clear()
        _REGISTERED.add("bench_schema")
    for name in list_models():
        if name not in _REGISTERED:
            cs.store(group="model", name=name, node=ModelConfig(name=name))
            _REGISTERED.add(name)


# The YAML configs ship inside the package (package data), so an installed wheel finds them from
# any folder. Absolute: Hydra resolves a relative config path as a Python package when called from one.
from bench import CONF_DIR  # noqa: E402  (defined in the light package __init__, for --help)


def compose_config(overrides=(), *, return_hydra_config: bool = False):
    """``conf/config.yaml`` composed with ``overrides``, as ``bench-train`` would see it (paths
    starting with ``~`` expanded, :func:`expand_user_paths`).

    Outside a Hydra app this opens the config directory for the call; inside one (a run
    of ``bench-train``) Hydra is already set up on the same directory and is reused.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    if GlobalHydra.instance().is_initialized():
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=return_hydra_config)
    else:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=return_hydra_config)
    return expand_user_paths(cfg)


# --------------------------------------------------------------------------- run identity
@functools.cache
def _schema_identity_rules() -> tuple[frozenset, dict]:
    ignored, neutral = config_keys.identity_rules(BenchConfig)
    return frozenset(ignored), neutral


def result_keys(container: dict, prefix: tuple = ()) -> dict:
    """``container`` (a resolved config, or its group at ``prefix``) without the keys that do not
    change results: those never do, and options at the default they were added with."""
    return config_keys.result_keys(container, _schema_identity_rules(), prefix)


def protocol_keys() -> tuple[str, ...]:
    """The dotted keys a run is compared with its recipe on (:func:`bench.config.keys.protocol_keys`)."""
    return config_keys.protocol_keys(BenchConfig)


# Where a ``_target_`` lived when runs were first hashed with it: code that moves (issue 26 put the
# schedules in bench.training) computes the same thing, so a finished run keeps its identity and is
# never retrained because a module changed folders.
_TARGET_ALIASES = {"bench.training.schedules.": "bench.schedules."}


def _identity_targets(value):
    """``value`` with every ``_target_`` written as it was when the identity was first hashed."""
    if isinstance(value, dict):
        out = {k: _identity_targets(v) for k, v in value.items()}
        target = out.get("_target_")
        if isinstance(target, str):
            for now, then in _TARGET_ALIASES.items():
                if target.startswith(now):
                    out["_target_"] = then + target[len(now):]
        return out
    return value


def run_identity(cfg) -> tuple[dict, str]:
    """The resolved config as a plain dict and its hash over the keys that change results."""
    from bench.runs import config_hash

    container = OmegaConf.to_container(cfg, resolve=True)
    return container, config_hash(_identity_targets(result_keys(container)))
