"""Shared fixtures: a shrunk config (CPU, tiny images, small synthetic data) for fast runs."""

from __future__ import annotations

import os

import pytest
import torch
from bench.config import compose_config

torch.set_num_threads(min(2, os.cpu_count() or 1))

# Small enough for seconds per run on 2 cores, big enough that every class reaches all splits.
SMOKE_OVERRIDES = [
    "trainer=cpu_smoke",
    "model=simple_cnn",
    "model.pretrained=false",
    "data.image_size=32",
    "data.synthetic_n_per_class=30",
    "data.synthetic_size=48",
    "data.decode_workers=1",
]


def compose_cfg(*overrides: str, return_hydra_config: bool = False):
    return compose_config(overrides, return_hydra_config=return_hydra_config)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One cache (generated datasets, decoded stores) for the whole session."""
    return tmp_path_factory.mktemp("bench-cache")


@pytest.fixture
def make_cfg(tmp_path, cache_dir):
    """``make_cfg(*overrides)``: the smoke config writing results under this test's tmp_path."""

    def _make(*overrides: str):
        return compose_cfg(
            *SMOKE_OVERRIDES,
            f"paths.results_dir={tmp_path / 'results'}",
            f"paths.cache_dir={cache_dir}",
            *overrides,
        )

    return _make
