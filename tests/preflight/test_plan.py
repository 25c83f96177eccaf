"""The plan of a command line (bench.preflight): every combination the sweeper starts, every
problem listed at once, a swept value that does not compose."""

from __future__ import annotations


import pytest

from bench.preflight import plan_runs, preflight


# --------------------------------------------------------------------------- preflight
def test_preflight_lists_every_problem_at_once(tmp_path, monkeypatch):
    plan = plan_runs(["-m", "data=imagefolder", f"data.root={tmp_path / 'missing'}", "model=resnet18,inception_v3",
                      "data.image_size=64", "model.pretrained=true", f"paths.results_dir={tmp_path}",
                      "data.augment.interpolation=bicubic"])
    assert plan.models == ["resnet18", "inception_v3"]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache
    import bench.preflight.models as pf

    monkeypatch.setattr(pf, "_REACHABLE", {"download.pytorch.org": False})  # offline, deterministically
    report = preflight(plan)
    text = report.format()
    assert not report.ok
    assert "data.root" in text  # the missing folder
    assert "inception_v3: data.image_size=64" in text  # too small for inception's aux head
    assert "resnet18 (resnet18-" in text and "model.pretrained=false" in text
    assert "data.augment.interpolation='bicubic'" in text


def test_plan_expands_the_experiments_sweep():
    plan = plan_runs(["-m", "experiment=gavas2021", "data.root=/data", "seed=0,1"])
    assert len(plan.models) == 27 and plan.seeds == [0, 1] and plan.n_runs == 54
    single = plan_runs(["model=vgg19"])
    assert single.models == ["vgg19"] and not single.multirun


def test_the_plan_counts_every_combination_the_sweeper_starts():
    # models x seeds x learning rates: the progress line and the disk check count 2 x 2 x 3 runs
    plan = plan_runs(["-m", "model=simple_cnn,squeezenet1_1", "seed=0,1", "optim.lr=0.1,0.01,0.001"])
    assert plan.n_runs == 12
    assert plan_runs(["model=simple_cnn", "optim.lr=0.1"]).n_runs == 1


@pytest.mark.reliability
def test_a_swept_value_that_does_not_compose_is_named_by_the_preflight(tmp_path):
    report = preflight(plan_runs(["-m", "model=simple_cnn", "model.pretrained=false", "trainer.batch_size=32,abc",
                                  f"paths.results_dir={tmp_path}"]))
    assert any("trainer.batch_size=abc" in p and "does not compose" in p for p in report.problems), report.format()


def test_a_command_line_value_replaces_the_experiments_sweep_as_hydra_does():
    """Hydra's BasicSweeper puts the command line after hydra.sweeper.params, so `model=simple_cnn` replaces
    quickstart's four models: the preflight counts (and bench-sweep submits) one run, not four."""
    from bench.preflight import plan_runs

    assert plan_runs(["-m", "experiment=quickstart"]).n_runs == 4
    one = plan_runs(["-m", "experiment=quickstart", "model=simple_cnn"])
    assert one.n_runs == 1 and one.models == ["simple_cnn"]
    two = plan_runs(["-m", "experiment=quickstart", "model=simple_cnn,resnet18"])
    assert two.n_runs == 2 and two.models == ["simple_cnn", "resnet18"]
