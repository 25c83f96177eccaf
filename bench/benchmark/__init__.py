"""``bench-benchmark``: the harness against each model's speed limit and the paper's plain loop.

What it measures is described in :mod:`bench.benchmark.run`. The package
follows the steps of a run, each module importing only from those listed before it:

- ``common``: CSV columns, ratio and steady-speed rules, environment, foreign-load meter
- ``ceiling``: 1. the model alone
- ``pipeline``: 2. the data pipeline alone
- ``harness``: 3. the harness (``bench.training.run_training``)
- ``reference``: 4. the reference loop, also the ``_reference`` subprocess entry point
  (``python -m bench.benchmark _reference ...``, through ``__main__``)
- ``sweep``: 5. the ``bench-train -m`` sweep
- ``output``: the CSV, JSON and printed table
- ``run``: the whole benchmark of parsed arguments (the console script is :mod:`bench.cli.benchmark`)
"""

from .ceiling import measure_ceiling, time_best
from .run import model_list, run_benchmark
from .common import (
    COLUMNS,
    MODES,
    POLLUTED,
    SWEEP_COLUMNS,
    ForeignLoad,
    cpu_flags,
    environment,
    load_average,
    ratio,
    steady,
)
from .harness import compose_cfg, harness_overrides, run_harness
from .output import format_table, write_outputs
from .pipeline import measure_decode, measure_loader
from .reference import reference_datasets, reference_main, relative_samples, run_reference
from .sweep import bench_train_command, run_sweep

__all__ = [
    "COLUMNS", "MODES", "POLLUTED", "SWEEP_COLUMNS",
    "ForeignLoad", "bench_train_command", "compose_cfg", "cpu_flags", "environment", "format_table",
    "harness_overrides", "load_average", "measure_ceiling", "measure_decode", "measure_loader",
    "model_list", "ratio", "reference_datasets", "reference_main", "relative_samples",
    "run_benchmark", "run_harness", "run_reference", "run_sweep", "steady", "time_best", "write_outputs",
]
