"""Shared fixtures: the session cache, the smoke config per test, one detector run and one classifier run for
the whole session, and the smear fields the chain tests read. Plain helpers are in helpers.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.helpers import SMALL_DETECTOR, SMOKE_OVERRIDES, compose_cfg

torch.set_num_threads(min(2, os.cpu_count() or 1))


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
    from bench import runs

    exp = classifier_run.root.parents[2]
    copy = tmp_path / "copied" / exp.name
    shutil.copytree(exp, copy)
    return runs.RunDir(copy / classifier_run.root.relative_to(exp))


@pytest.fixture
def fresh(tmp_path):
    """For the smear chain: six fields the detector never saw (seed 11) and their COCO truth (labels rbc,
    platelet and the seven white-cell types)."""
    from bench.cli.smear_fields import main as draw_fields

    root = tmp_path / "fresh"
    assert draw_fields([str(root), "--n", "6", "--size", "96", "--seed", "11"]) == 0
    return root / "images", root / "instances.json"


@pytest.fixture
def fields(tmp_path):
    """For the smear chain: fresh synthetic fields (a seed the detector never trained or validated on: the chain refuses
    those), a blank field (no cells) and a broken file; the truth json."""
    from bench.cli.smear_fields import main as draw_fields

    root = tmp_path / "fresh"
    assert draw_fields([str(root), "--n", "16", "--size", "96", "--seed", "7"]) == 0
    folder = tmp_path / "fields"
    shutil.copytree(root / "images", folder)
    Image.new("RGB", (96, 96), (230, 220, 200)).save(folder / "empty.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    return folder, root / "instances.json"
