"""Command-line checks that run before Hydra composes anything.

Hydra's own message for an unknown ``model=`` choice lists every option; ours names
the closest matches, which is what a typo at 8 pm needs. ``timm/<name>`` choices are
registered as config nodes on demand (timm has over a thousand models; registering
all of them up front would slow every start).
"""

from __future__ import annotations

import difflib
import re

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from bench.config import BenchConfig, ModelConfig
from bench.models import UnknownModelError, get_model_spec

_MODEL_ARG = re.compile(r"^(?:\+\+|\+)?model(?:\.name)?=(?P<value>.+)$")


def requested_models(args: list[str]) -> list[str]:
    """Model names in ``model=a,b`` or ``model.name=a`` overrides (sweep lists split)."""
    names = []
    for arg in args:
        m = _MODEL_ARG.match(arg)
        if not m:
            continue
        value = m.group("value").strip()
        if value.startswith(("choice(", "range(", "glob(", "${")):
            continue  # Hydra sweep functions and interpolations: Hydra validates those
        names.extend(v.strip().strip("'\"") for v in value.split(",") if v.strip())
    return names


def check_model_overrides(args: list[str]) -> str | None:
    """A one-paragraph error for the first unknown model name, or None."""
    for name in requested_models(args):
        try:
            get_model_spec(name)
        except UnknownModelError as exc:
            return str(exc)
    return None


def register_requested_timm_models(args: list[str]) -> None:
    """Make ``model=timm/<name>`` a valid config choice for the timm models asked for.

    Hydra reads the choice ``timm/<name>`` of group ``model`` as the option ``<name>`` of the
    sub-group ``model/timm``, so that is where the node goes (a node stored under the name
    ``timm/<name>`` in ``model`` is never found)."""
    cs = ConfigStore.instance()
    for name in requested_models(args):
        if name.startswith("timm/"):
            cs.store(group="model/timm", name=name.split("/", 1)[1], node=ModelConfig(name=name))


_GROUP_ARG = re.compile(r"^(?:\+\+|\+|~)?(?P<group>[A-Za-z_][\w/]*)=(?P<value>.*)$")


def group_option_hint(args: list[str]) -> str | None:
    """For ``experiment=nonexist`` (a config group given an option it does not have), name the
    group's options; Hydra's own message would send you to the schema's keys instead."""
    from bench.cli.commands import config_groups

    groups = config_groups()
    for arg in args:
        m = _GROUP_ARG.match(arg)
        if not m or m.group("group") not in groups:
            continue
        options = groups[m.group("group")]
        for value in (v.strip() for v in m.group("value").split(",")):
            if value and value not in options and value != "null":
                close = difflib.get_close_matches(value, options, n=3)
                hint = f" Did you mean {', '.join(close)}?" if close else ""
                return (f"{m.group('group')}={value!r} is not one of the {m.group('group')} options: "
                        f"{', '.join(options)}.{hint}")
    return None


_KEY_ARG = re.compile(r"^(?P<key>[A-Za-z_][\w.]*)=")
FREE_FORM = ("optim", "sched", "hydra")  # keys belong to torch / Hydra, not to our schema


def unknown_key_hint(args: list[str]) -> str | None:
    """For an override of a key our schema does not have, name it and the closest valid keys."""
    schema = OmegaConf.structured(BenchConfig)
    for arg in args:
        m = _KEY_ARG.match(arg)
        if not m or m.group("key").split(".")[0] in FREE_FORM:
            continue
        node, path = schema, []
        for part in m.group("key").split("."):
            if not isinstance(node, DictConfig):
                break
            if part not in node:
                valid = sorted(str(k) for k in node.keys())
                close = difflib.get_close_matches(part, valid, n=3)
                where = ".".join(path) or "the top level"
                hint = f" Did you mean {', '.join('.'.join([*path, c]) for c in close)}?" if close else ""
                return (f"unknown key {m.group('key')!r}: {where} has no {part!r}.{hint} "
                        f"Valid keys there: {', '.join(valid)}.")
            node, path = node[part], [*path, part]
    return None


def override_syntax_hint(args: list[str], exc: BaseException) -> str | None:
    """For an override Hydra's grammar cannot read (``data.root=~/cells``: ``~`` is not a character of
    its unquoted values), name it and the two ways to write it."""
    text = str(exc)
    if "LexerNoViableAlt" not in text and "mismatched input" not in text and "token recognition" not in text:
        return None
    bad = next((a for a in args if a and a in text), None) or text.splitlines()[-1].strip()
    key, _, value = bad.partition("=")
    home = (f" or {key}=$HOME{value[1:]} (your shell expands $HOME before Hydra reads it)"
            if value.startswith("~") else "")
    return (f"{bad!r} is not an override Hydra can read: its value holds a character that Hydra's override "
            f"grammar only takes in quotes. Quote the value inside the shell's quotes: \"{key}='{value}'\"{home}. "
            "Paths are expanded (~ is your home folder) once the value is read.")


def compose_hint(args: list[str], exc: BaseException) -> str:
    """The one-paragraph reason a command line does not compose, for every console script."""
    return group_option_hint(args) or override_syntax_hint(args, exc) or unknown_key_hint(args) or str(exc)
