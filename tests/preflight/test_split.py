"""The preflight and the split: another dataset or a changed split setting under an existing
experiment, and sweeps over split settings that need them in the experiment name."""

from __future__ import annotations


import pandas as pd
import pytest

from bench.preflight import plan_runs, preflight
from bench.training import run_training as train

from tests.helpers import colour_folders, compose_cfg


@pytest.mark.own_data
def test_another_dataset_under_the_same_experiment_stops_the_preflight_before_anything_moves(tmp_path, cache_dir):
    first = colour_folders(tmp_path / "lab1", {"a": 10, "b": 10})
    second = colour_folders(tmp_path / "lab2", {"a": 11, "c": 10}, seed=3)
    common = ["model=simple_cnn", "model.pretrained=false", "trainer=cpu_smoke", "data=imagefolder",
              "data.image_size=16", "trainer.epochs=1", "data.decode_workers=1", "experiment_name=shared",
              f"paths.results_dir={tmp_path / 'results'}", f"paths.cache_dir={cache_dir}"]
    assert train(compose_cfg(*common, f"data.root={first}"))["status"] == "completed"
    report = preflight(plan_runs([*common, f"data.root={second}"]))
    assert any("does not match the split of experiment 'shared'" in p and "Nothing was moved" in p
               for p in report.problems)
    # A changed split setting with the same data is named too.
    report = preflight(plan_runs([*common, f"data.root={first}", "data.split_seed=7"]))
    assert any("data.split_seed=7 (the split was made with 42)" in p for p in report.problems)
    assert preflight(plan_runs([*common, f"data.root={first}"])).ok
    run_dir = tmp_path / "results" / "shared" / "runs" / "simple_cnn" / "seed0"
    assert (run_dir / "metrics.json").exists() and not (run_dir.parent / "replaced").exists()


@pytest.mark.own_data
def test_a_changed_split_rounding_stops_the_run_and_the_preflight(make_cfg, tmp_path):
    from bench.data.split import load_or_create_manifest

    assert train(make_cfg("trainer.epochs=1", "experiment_name=ceiled",
                          "data.split_rounding=ceil"))["status"] == "completed"
    out = train(make_cfg("trainer.epochs=1", "experiment_name=ceiled", "model=squeezenet1_1"))
    assert out["status"] == "failed" and "data.split_rounding=round (the split was made with ceil)" in out["error"]
    lab = colour_folders(tmp_path / "lab", {"a": 10, "b": 10})
    common = ["model=simple_cnn", "model.pretrained=false", "data=imagefolder", f"data.root={lab}",
              "experiment_name=labsplit", f"paths.results_dir={tmp_path / 'results'}"]
    # The experiment's split, made with ceil (the preflight reads paths and labels, not the hashes).
    table = pd.DataFrame({"path": [f"{c}/{c}_{i:03d}.png" for c in "ab" for i in range(10)],
                          "label": [c for c in "ab" for _ in range(10)]})
    table["sha1"] = table["path"]
    load_or_create_manifest(tmp_path / "results" / "labsplit" / "manifest.csv", table, seed=42,
                            fractions=[0.64, 0.24, 0.12], rounding="ceil")
    report = preflight(plan_runs(common))
    assert any("data.split_rounding=round (the split was made with ceil)" in p for p in report.problems), \
        report.format()
    assert not any("split was made" in p for p in preflight(plan_runs([*common, "data.split_rounding=ceil"])).problems)


@pytest.mark.own_data
@pytest.mark.parametrize("sweep, name_override", [
    ("data.split_rounding=round,ceil", None),
    ("data.split_fractions=[0.64,0.24,0.12],[0.5,0.25,0.25]", None),
    # An interpolation of another split key does not give each seed its own experiment.
    ("data.split_seed=0,1", "experiment_name=lab_${data.split_fractions}"),
])
def test_a_sweep_over_any_split_setting_needs_that_setting_in_the_experiment_name(tmp_path, sweep, name_override):
    key = sweep.split("=", 1)[0]
    args = ["-m", sweep, "model=simple_cnn", "model.pretrained=false", f"paths.results_dir={tmp_path}"]
    report = preflight(plan_runs([*args, *([name_override] if name_override else [])]))
    assert any(p.startswith(f"{key} is swept") for p in report.problems), report.format()
    ok = preflight(plan_runs([*args, f"experiment_name=lab_${{{key}}}"]))
    assert not any("is swept" in p for p in ok.problems), ok.format()


# --------------------------------------------------------------------------- 1. sweeps over the split
@pytest.mark.reliability
def test_a_sweep_over_split_seeds_needs_an_experiment_per_split(tmp_path):
    args = ["-m", "data.split_seed=0,1,2", "model=simple_cnn", "model.pretrained=false",
            f"paths.results_dir={tmp_path}"]
    report = preflight(plan_runs(args))
    assert any("data.split_seed is swept (0, 1, 2)" in p and "experiment_name=synthetic_split${data.split_seed}" in p
               for p in report.problems)
    ok = preflight(plan_runs([*args, "experiment_name=pbc_split${data.split_seed}"]))
    assert not any("is swept" in p for p in ok.problems)
