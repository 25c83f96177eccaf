"""What each config key is, marked where the schema (bench.config) defines it, and the walks
that read the marks.

Two questions are answered per key, once:
- Does it change a run's results? A run's identity hash (``bench.config.run_identity``) covers
  every key but those marked :func:`not_a_result`, so e.g. turning progress bars off never
  retrains a finished model; an option :func:`added_later` stays out of it at the default it was
  added with.
- Is it a departure from a paper's recipe when it differs? Every key that can change a result is
  compared (``bench.config.recipe``), so a new option can never leave the protocol column at "paper"
  while it changes the numbers; the exceptions (:func:`not_a_departure`) carry their reason.
- Is it a path? Those of :data:`PATH_KEYS` starting with ``~`` are the user's home folder.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import MISSING, field

from omegaconf import OmegaConf

_IDENTITY = "bench_identity"
_PROTOCOL = "bench_protocol"
_COMPARED = "compared:"  # another command's group: out of a training run's hash, compared with the recipe


def not_a_result(default=MISSING, *, default_factory=MISSING):
    """A key (or group) that never changes a run's results: left out of the identity hash."""
    return field(default=default, default_factory=default_factory, metadata={_IDENTITY: "ignored"})


def added_later(default=MISSING, *, default_factory=MISSING, not_a_departure: str | None = None):
    """An option added after runs were already on disk, whose default does what the code did
    before it: at that value it stays out of the identity hash, so adding an option never
    retrains (or sets aside) a finished run whose config did not ask for it.
    ``not_a_departure``: as for :func:`not_a_departure`, the reason it is not compared with a recipe."""
    metadata = {_IDENTITY: "neutral", **({_PROTOCOL: not_a_departure} if not_a_departure else {})}
    return field(default=default, default_factory=default_factory, metadata=metadata)


def not_a_departure(default=MISSING, *, default_factory=MISSING, why: str):
    """A key that is part of a run's identity but never a departure from a paper's recipe
    (``why``: the reason, e.g. the evaluation batch size changes no prediction)."""
    return field(default=default, default_factory=default_factory, metadata={_PROTOCOL: why})


def another_command(*, default_factory, command: str):
    """A group that configures another command (``command``: bench-svm, bench-cv): out of a
    training run's identity hash (bench-train never reads it) but compared with the recipe, since
    the runs of that command are made by it."""
    return field(default_factory=default_factory, metadata={_IDENTITY: "ignored", _PROTOCOL: _COMPARED + command})


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not MISSING else f.default


def identity_rules(schema, prefix: tuple = ()) -> tuple[set, dict]:
    """The dotted paths (tuples) marked :func:`not_a_result`, and those marked :func:`added_later`
    with their defaults, read from the dataclass ``schema``."""
    ignored, neutral = set(), {}
    for f in dataclasses.fields(schema):
        path = (*prefix, f.name)
        default = _default(f)
        kind = f.metadata.get(_IDENTITY)
        if kind == "ignored":
            ignored.add(path)
            continue
        if kind == "neutral":
            neutral[path] = default
        if dataclasses.is_dataclass(default):
            sub_ignored, sub_neutral = identity_rules(type(default), path)
            ignored |= sub_ignored
            neutral.update(sub_neutral)
    return ignored, neutral


def result_keys(container: dict, rules: tuple, prefix: tuple = ()) -> dict:
    """``container`` (a resolved config, or its group at ``prefix``) without the keys that do not
    change results by ``rules`` (:func:`identity_rules`): those never do, and options at the
    default they were added with."""
    ignored, neutral = rules
    out = {}
    for key, value in container.items():
        path = (*prefix, key)
        if path in ignored or (path in neutral and value == neutral[path]):
            continue
        if isinstance(value, dict) and value:
            value = result_keys(value, rules, path)
            if not value:  # a group left empty (recipe at its defaults)
                continue
        out[key] = copy.deepcopy(value)  # nested values are shared with the container written to config.yaml
    return out


def protocol_keys(schema, prefix: tuple = ()) -> tuple[str, ...]:
    """The dotted keys a run is compared with its recipe on: every key of ``schema`` but those
    that never change a result (:func:`not_a_result`) or are no departure (:func:`not_a_departure`);
    a group of another command (:func:`another_command`) is compared. Free-form groups (optim,
    sched) are one key each, compared key by key by the caller."""
    keys: list[str] = []
    for f in dataclasses.fields(schema):
        path = (*prefix, f.name)
        why = f.metadata.get(_PROTOCOL)
        compared_group = why is not None and why.startswith(_COMPARED)
        if (why is not None and not compared_group) or (f.metadata.get(_IDENTITY) == "ignored" and not compared_group):
            continue
        default = _default(f)
        if dataclasses.is_dataclass(default):
            keys += protocol_keys(type(default), path)
        else:
            keys.append(".".join(path))
    return tuple(keys)


def not_a_departure_reasons(schema, prefix: tuple = ()) -> dict[str, str]:
    """``{dotted key: why}`` for every key marked as no departure (for the docs and the tests)."""
    out: dict[str, str] = {}
    for f in dataclasses.fields(schema):
        path = (*prefix, f.name)
        why = f.metadata.get(_PROTOCOL)
        if why is not None and not why.startswith(_COMPARED):
            out[".".join(path)] = why
            continue
        default = _default(f)
        if dataclasses.is_dataclass(default):
            out.update(not_a_departure_reasons(type(default), path))
    return out


# The options that name a file or folder: a value starting with ~ is the user's home folder, as in
# a shell (quoted on the command line, since Hydra's grammar takes ~ only in quotes).
PATH_KEYS = ("data.root", "data.annotations", "model.weights", "paths.results_dir", "paths.cache_dir", "logger.dir")


def expand_user_paths(cfg):
    """``cfg`` with every path option of :data:`PATH_KEYS` that starts with ``~`` expanded (in place)."""
    for key in PATH_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, str) and value.startswith("~"):
            OmegaConf.update(cfg, key, os.path.expanduser(value), merge=False)
    return cfg


# conf/config.yaml: hydra.run.dir: ${bench_expand:${paths.results_dir}}/... (Hydra's own log folder).
OmegaConf.register_new_resolver("bench_expand", lambda path: os.path.expanduser(str(path)),
                                replace=True)
