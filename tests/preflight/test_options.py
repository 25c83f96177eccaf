"""Options the preflight checks against the models: unknown weights tags, a frozen random backbone,
Cheuque's default without converted weights, a classifier on detection data, a logger whose package
is missing."""

from __future__ import annotations


import pytest




@pytest.mark.fidelity
@pytest.mark.parametrize("freeze", ["model.freeze_backbone=true", "model.trainable_blocks=2",
                                    "model.trainable_conv_blocks=4"])
def test_a_frozen_random_backbone_is_a_preflight_problem_naming_the_fix(tmp_path, freeze):
    from bench.preflight import plan_runs, preflight

    common = ["data=imagefolder", f"data.root={tmp_path}", f"paths.results_dir={tmp_path / 'r'}"]
    report = preflight(plan_runs(["model=resnet18", "model.pretrained=false", freeze, *common]))
    problem = [p for p in report.problems if "random initialisation" in p]
    assert len(problem) == 1 and freeze in problem[0] and "model.weights=PATH" in problem[0]
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    for fixed in (["model.pretrained=false", freeze, f"model.weights={weights}"], ["model.pretrained=false"]):
        report = preflight(plan_runs(["model=resnet18", *fixed, *common]))
        assert not any("random initialisation" in p for p in report.problems)


@pytest.mark.fidelity
def test_cheuques_default_without_converted_weights_stops_at_the_preflight(tmp_path):
    from bench.preflight import plan_runs, preflight

    report = preflight(plan_runs(["experiment=cheuque2022_two_level", f"data.root={tmp_path}",
                                  f"paths.results_dir={tmp_path / 'r'}"]))
    assert any("model.freeze_backbone=true" in p and "cheuque2022_two_level" in p for p in report.problems)


@pytest.mark.fidelity
def test_an_unknown_weights_tag_is_a_preflight_problem(tmp_path):
    from bench.preflight import plan_runs, preflight

    report = preflight(plan_runs(["model=resnet50", "model.weights_tag=IMAGENET1K_V9", "data=imagefolder",
                                  f"data.root={tmp_path}", f"paths.results_dir={tmp_path}"]))
    assert any("model.weights_tag='IMAGENET1K_V9' is not one of resnet50's" in p for p in report.problems)


def test_a_missing_logger_package_is_a_preflight_problem(monkeypatch):
    import importlib.util

    from bench.training.loggers import missing_package

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    assert "pip install mlflow-skinny" in missing_package("mlflow")
    assert missing_package("csv") is None


def test_a_classifier_on_detection_data_is_a_preflight_problem(tmp_path):
    from bench.preflight import plan_runs, preflight

    report = preflight(plan_runs(["data=synthetic_smear", "model=resnet18", "model.pretrained=false",
                                  f"paths.results_dir={tmp_path}"]))
    assert any("resnet18 is a classification model" in p for p in report.problems), report.format()
