"""What the preflight checks (a :class:`Plan`: the runs a command line will start) and what it
found (a :class:`Report`: problems that stop it, warnings and notes)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from omegaconf import DictConfig


@dataclass
class Plan:
    cfg: DictConfig  # the config of the first run (lists collapsed to their first value)
    models: list[str]
    seeds: list[int]
    multirun: bool
    swept: dict[str, list[str]] = field(default_factory=dict)  # every swept key and its values
    overrides: list[str] = field(default_factory=list)  # the command line's overrides as given
    # The other values of swept keys (not model / seed, which the checks go through by name): each as
    # ("key=value", the overrides of the first run with that one value changed), composed and checked
    # by the preflight, so a bad value fails before the first run and not when its own run starts.
    variants: list[tuple[str, list[str]]] = field(default_factory=list)

    @property
    def n_runs(self) -> int:
        """Every combination Hydra's sweeper will start (models x seeds x any other swept key)."""
        return math.prod(len(v) for v in self.swept.values()) if self.multirun else 1


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    n_images: int | None = None  # the data's images, when known cheaply (bench-sweep plan's cost estimate)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        lines = [f"  ok: {n}" for n in self.notes]
        lines += [f"  WARNING: {w}" for w in self.warnings]
        lines += [f"  PROBLEM: {p}" for p in self.problems]
        return "\n".join(lines)
