"""Shared fixtures: a shrunk config (CPU, tiny images, small synthetic data) for fast runs."""

from __future__ import annotations

import os
from pathlib import Path

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


# A detector in seconds: Faster R-CNN (MobileNetV3 320) from scratch, 2 epochs on 16 synthetic fields
# of 96 px, labels platelet / rbc / wbc (experiment=detect_quickstart's label map).
SMALL_DETECTOR = ["experiment=detect_quickstart", "data.smear_n_fields=16", "data.smear_size=96",
                  "data.image_size=96", "trainer.epochs=2", "trainer.batch_size=4", "trainer.checkpoint_every_s=0",
                  "trainer.progress=false", "trainer.device=cpu"]


@pytest.fixture(scope="session")
def detector_run(tmp_path_factory, cache_dir):
    """One small detector run shared by the detection and cascade tests: (config, RunDir)."""
    from bench import runs
    from bench.training import run_training

    results = tmp_path_factory.mktemp("det")
    cfg = compose_cfg(*SMALL_DETECTOR, f"paths.results_dir={results}", f"paths.cache_dir={cache_dir}")
    out = run_training(cfg)
    assert out["status"] == "completed", out.get("error")
    return cfg, runs.RunDir(Path(out["run_dir"]))


@pytest.fixture(scope="session")
def classifier_run(tmp_path_factory, cache_dir):
    """One tiny completed classifier run of the smoke config (1 epoch, 2 batches, the eight synthetic PBC
    classes), trained once for the session: for every test that only reads a completed run (its
    metrics.json, predictions, best.pt, experiment folder). A test that writes into the folder takes
    ``classifier_run_copy``; one that trains with its own options trains its own run."""
    from bench import runs
    from bench.training import run_training as train

    results = tmp_path_factory.mktemp("cls")
    cfg = compose_cfg(*SMOKE_OVERRIDES, "trainer.epochs=1", "trainer.max_batches=2", "experiment_name=cells",
                      f"paths.results_dir={results}", f"paths.cache_dir={cache_dir}")
    out = train(cfg)
    assert out["status"] == "completed", out
    return runs.RunDir(Path(out["run_dir"]))


@pytest.fixture
def classifier_run_copy(classifier_run, tmp_path):
    """This test's own copy of ``classifier_run``'s experiment folder (manifest, run folder, leaderboard),
    for a test that writes into it (an ensemble folder, an external evaluation): the session's run stays
    as it was trained. Its RunDir, in the copy."""
    import shutil

    from bench import runs

    exp = classifier_run.root.parents[2]
    copy = tmp_path / "copied" / exp.name
    shutil.copytree(exp, copy)
    return runs.RunDir(copy / classifier_run.root.relative_to(exp))
