"""The search space of ``tune.space``: per config key, ``'log(lo, hi)'`` (log-uniform float),
``'uniform(lo, hi)'``, ``'int(lo, hi)'`` (inclusive) or a list of choices; parsed once, before any trial."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

_RANGE = re.compile(r"^\s*(log|uniform|int)\s*\(\s*([^,()]+?)\s*,\s*([^,()]+?)\s*\)\s*$")


class SpaceError(ValueError):
    """A search space that cannot be searched: the message names the key and the accepted forms."""


def parse_space(space) -> dict[str, tuple]:
    """``{key: ("log"|"uniform"|"int", lo, hi)}`` or ``{key: ("choice", [values])}``."""
    if not isinstance(space, Mapping) or not space:
        raise SpaceError("tune.space is empty: give each option to search, e.g. "
                         "tune.space=\"{optim.lr: 'log(1e-4, 1e-1)', optim.momentum: [0.8, 0.9]}\".")
    out = {}
    for key, spec in space.items():
        key = str(key)
        if isinstance(spec, str):
            m = _RANGE.match(spec)
            if not m:
                raise SpaceError(f"tune.space.{key}={spec!r} is not log(lo, hi), uniform(lo, hi), int(lo, hi) or a "
                                 "list of choices.")
            kind, lo, hi = m.group(1), float(m.group(2)), float(m.group(3))
            if kind == "int":
                lo, hi = int(lo), int(hi)
            if not lo < hi or (kind == "log" and lo <= 0):
                raise SpaceError(f"tune.space.{key}={spec!r}: needs lo < hi" + (" and lo > 0 (log)" if kind == "log" else "")
                                 + ".")
            out[key] = (kind, lo, hi)
        elif isinstance(spec, Sequence) and len(spec) >= 1:
            out[key] = ("choice", list(spec))
        else:
            raise SpaceError(f"tune.space.{key}={spec!r} is not log(lo, hi), uniform(lo, hi), int(lo, hi) or a list.")
    return out


def suggest(trial, space: dict[str, tuple]) -> dict:
    """One value per key from an Optuna trial."""
    values = {}
    for key, (kind, *args) in space.items():
        if kind == "log":
            values[key] = trial.suggest_float(key, args[0], args[1], log=True)
        elif kind == "uniform":
            values[key] = trial.suggest_float(key, args[0], args[1])
        elif kind == "int":
            values[key] = trial.suggest_int(key, args[0], args[1])
        else:
            values[key] = trial.suggest_categorical(key, args[0])
    return values
