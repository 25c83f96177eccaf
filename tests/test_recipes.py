"""The protocol column sees every setting that changes results, and our readings of the papers
(issue 24): keys derived from the schema, models the paper did not run, detector recipes, the
validation number a sweeper optimises, and a frozen backbone that would stay random."""

from __future__ import annotations

import dataclasses
import typing

import pandas as pd
import pytest
import torch
import torchvision
from sklearn.metrics import f1_score

from bench import config as config_mod
from bench.config.recipe import protocol_deviations, recipe_of

from .conftest import compose_cfg

GAVAS = ("experiment=gavas2021", "data.root=/d", "model=resnet50")


def _schema_field(dotted: str):
    """The dataclass field of a dotted schema key, and its resolved type."""
    schema = config_mod.BenchConfig
    *groups, leaf = dotted.split(".")
    for g in groups:
        schema = typing.get_type_hints(schema)[g]
    return typing.get_type_hints(schema)[leaf]


def _another_value(key: str, value, hint):
    """A value of the key's type that differs from ``value``."""
    text = str(hint)
    if value is None:
        if "List" in text:
            return [1] if "float" in text or "int" in text else ["x"]
        if "Dict" in text:
            return {"a": "b"}
        if "bool" in text:
            return True
        return 2 if "int" in text or "float" in text else "other"
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 3
    if isinstance(value, str):
        return f"{value}_x"
    if isinstance(value, list):
        return value[:-1] if value else [1]
    if isinstance(value, dict):
        return {**value, "extra_key": ["x"] if "List" in text else "x"}
    raise AssertionError(f"no rule for {key}={value!r}")


def _changed(key: str):
    """The gavas2021 config with ``key`` set to another value (free-form groups: one of their keys)."""
    from omegaconf import OmegaConf

    cfg = compose_cfg(*GAVAS)
    target = {"optim": "optim.lr", "sched": "sched.step_size"}.get(key, key)
    value = OmegaConf.to_container(cfg, resolve=True)
    for part in target.split("."):
        value = value[part]
    hint = _schema_field(key) if key not in ("optim", "sched") else float
    OmegaConf.update(cfg, target, _another_value(key, value, hint), merge=False, force_add=True)
    return cfg


def test_every_result_changing_key_of_the_schema_is_compared_with_the_recipe():
    from bench.config.recipe import compared_keys

    base = compose_cfg(*GAVAS)
    assert protocol_deviations(base) == []
    keys = compared_keys()
    # The three that stayed at "paper" before (issue 24), named by hand: they must be among them.
    assert {"trainer.sched_interval", "trainer.select_by", "trainer.warmup_steps"} <= set(keys)
    for key in keys:
        found = protocol_deviations(_changed(key))
        assert found is not None and any(d.startswith(f"{key}=") or d.startswith(f"{key}.") for d in found), (
            key, found)


def test_settings_that_stayed_at_paper_are_named_with_the_recipes_value():
    changed = protocol_deviations(compose_cfg(*GAVAS, "trainer.sched_interval=step", "trainer.select_by=val_macro_f1",
                                              "trainer.warmup_steps=100"))
    assert sorted(changed) == ["trainer.sched_interval=step (paper: epoch)",
                               "trainer.select_by=val_macro_f1 (paper: val_acc)",
                               "trainer.warmup_steps=100 (paper: 0)"]
    # The frozen-vs-scratch recipe decays per step: per epoch is a departure (it used to vanish).
    frozen = protocol_deviations(compose_cfg("experiment=scratch_vs_pretrained", "variant=frozen", "data.root=/d",
                                             "model=vgg16", "trainer.sched_interval=epoch"))
    assert frozen == ["trainer.sched_interval=epoch (paper: step)"]


def test_keys_that_change_no_number_are_marked_once_with_a_reason_and_stay_in_the_identity():
    from bench.config.keys import not_a_departure_reasons

    reasons = not_a_departure_reasons(config_mod.BenchConfig)
    for key in ("trainer.eval_batch_size", "trainer.compile", "trainer.device", "seed", "data.root"):
        assert len(reasons[key]) > 20, key  # a reason, in words
    assert protocol_deviations(compose_cfg(*GAVAS, "trainer.eval_batch_size=7", "trainer.compile=true",
                                           "trainer.device=cpu", "seed=3", "data.split_seed=1")) == []
    # Not a departure is not "not a result": the identity hash still tells these runs apart.
    ids = {config_mod.run_identity(compose_cfg(*GAVAS, *o))[1] for o in ([], ["trainer.eval_batch_size=7"])}
    assert len(ids) == 2


@pytest.mark.parametrize("overrides, expected", [
    (("experiment=acevedo2019_finetune", "model=resnet50"), "model=resnet50 (paper: vgg16, inception_v3)"),
    (("experiment=gavas2021", "model=simple_cnn"), "model=simple_cnn (paper: one of the 27 models of experiment=gavas2021)"),
    (("experiment=almotairi2019", "model=resnet18"), "model=resnet18 (paper: wbcsnet)"),
])
def test_a_model_the_paper_did_not_run_is_named(overrides, expected):
    found = protocol_deviations(compose_cfg(*overrides, "data.root=/d"))
    assert expected in found
    assert not any(d.startswith("model=") for d in protocol_deviations(
        compose_cfg(overrides[0], "data.root=/d", "model=inception_v3" if "acevedo" in overrides[0] else
                    "model=vgg19" if "gavas" in overrides[0] else "model=wbcsnet")))


def test_a_variants_declaration_on_model_name_does_not_hide_a_model_the_paper_did_not_run():
    found = protocol_deviations(compose_cfg("experiment=scratch_vs_pretrained", "variant=frozen", "data.root=/d",
                                            "model.name=resnet18"))
    assert "model=resnet18 (paper: one of the 8 models of experiment=scratch_vs_pretrained/frozen)" in found


def test_detector_runs_are_compared_with_their_recipe_and_only_then():
    quick = compose_cfg("experiment=detect_quickstart")
    assert recipe_of(quick) is None and protocol_deviations(quick) is None  # no published detection recipe
    cheuque = compose_cfg("experiment=cheuque2022_detector")
    declared = list(cheuque.recipe.departures)
    assert declared and protocol_deviations(cheuque) == declared
    assert protocol_deviations(compose_cfg("experiment=cheuque2022_detector", "trainer.epochs=3")) == [
        *declared, "trainer.epochs=3 (paper: 12)"]


# --------------------------------------------------------------------------- readings of the papers
def test_acevedo_svm_reads_vgg16s_fc6_as_the_paper_and_the_other_layers_are_departures():
    svm = compose_cfg("experiment=acevedo2019_svm", "data.root=/d")
    split = "fits on the harness's 64 % train split, selects on validation (paper: an 88/12 train/test split)"
    for model in ("vgg16", "inception_v3"):
        assert protocol_deviations(svm, model=model) == [split]
    fc7 = protocol_deviations(compose_cfg("experiment=acevedo2019_svm", "data.root=/d", "model.head_keep_fc=null"),
                              model="vgg16")
    conv = protocol_deviations(compose_cfg("experiment=acevedo2019_svm", "data.root=/d", "model.head_keep_fc=0"),
                               model="vgg16")
    assert fc7 == [split, "model.head_keep_fc=none (paper: 1)"]
    assert conv == [split, "model.head_keep_fc=0 (paper: 1)"]
    assert "model=resnet18 (paper: vgg16, inception_v3)" in protocol_deviations(svm, model="resnet18")


def test_the_svm_features_of_head_keep_fc_1_are_vgg16s_fc6_after_relu():
    from bench.protocols.cnn_features import feature_extractor

    torch.manual_seed(0)
    extractor = feature_extractor("vgg16", pretrained=False, seed=0, keep_fc=1)
    x = torch.rand(2, 3, 32, 32)
    # The same network as torchvision builds it, its layers called one by one: conv stages, the
    # 7x7 pooling, flatten, fc6 (classifier[0]) and its ReLU (classifier[1]); dropout is off in eval.
    reference = torchvision.models.vgg16()
    reference.load_state_dict({k: v for k, v in extractor.state_dict().items()}, strict=False)
    reference.eval()
    with torch.no_grad():
        expected = reference.classifier[1](reference.classifier[0](torch.flatten(reference.avgpool(
            reference.features(x)), 1)))
        got = extractor(x)
    assert got.shape == (2, 4096)
    torch.testing.assert_close(got, expected)


def test_almotairi_and_cheuque_on_pbc_declare_the_data_as_a_departure():
    almotairi = protocol_deviations(compose_cfg("experiment=almotairi2019", "data.root=/d"))
    assert almotairi == ["the images of data.root, e.g. PBC's five white-cell classes (paper: its own Dataset1, "
                         "320 images of 70 x 70 px, and Dataset2)"]
    cheuque = protocol_deviations(compose_cfg("experiment=cheuque2022_two_level", "data.root=/d"))
    assert any("LISC" in d for d in cheuque)


def test_gavas_whole_image_view_is_the_offered_alternative_and_a_departure():
    assert protocol_deviations(compose_cfg(*GAVAS, "data.geometry=resize")) == [
        "data.geometry=resize (paper: resize_crop)"]


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


def test_cheuques_default_without_converted_weights_stops_at_the_preflight(tmp_path):
    from bench.preflight import plan_runs, preflight

    report = preflight(plan_runs(["experiment=cheuque2022_two_level", f"data.root={tmp_path}",
                                  f"paths.results_dir={tmp_path / 'r'}"]))
    assert any("model.freeze_backbone=true" in p and "cheuque2022_two_level" in p for p in report.problems)


# --------------------------------------------------------------------------- what a sweeper optimises
def test_selection_score_reads_the_runs_select_by_from_its_record():
    from bench.runs import selection_score

    val = {"accuracy": 0.9, "balanced_accuracy": 0.7, "macro": {"f1": 0.6}}
    assert selection_score({"val": val}) == 0.9  # before trainer.select_by existed: accuracy
    assert selection_score({"val": val, "select_by": "val_balanced_acc"}) == 0.7
    assert selection_score({"val": val, "select_by": "val_macro_f1"}) == 0.6
    assert selection_score({"val": {"map": 0.3}, "select_by": "val_map"}) == 0.3


def test_hydra_main_returns_the_validation_number_of_select_by(make_cfg):
    from bench import runs
    from bench.cli.train import hydra_main

    cfg = make_cfg("trainer.select_by=val_macro_f1", "trainer.epochs=1")
    returned = hydra_main.__wrapped__(cfg)
    run = runs.RunDir.for_run(runs.experiment_dir(cfg.paths.results_dir, cfg.experiment_name), "simple_cnn", 0)
    pred = pd.read_csv(run.predictions("val"))
    present = sorted(set(pred["label"]))
    expected = f1_score(pred["label"], pred["predicted"], labels=present, average="macro", zero_division=0)
    assert returned == pytest.approx(expected)


def test_every_compared_key_is_a_schema_key():
    from bench.config.recipe import compared_keys

    leaves = set()

    def walk(schema, prefix=()):
        for f in dataclasses.fields(schema):
            hint = typing.get_type_hints(schema)[f.name]
            if dataclasses.is_dataclass(hint):
                walk(hint, (*prefix, f.name))
            else:
                leaves.add(".".join((*prefix, f.name)))

    walk(config_mod.BenchConfig)
    assert set(compared_keys()) <= leaves


# --------------------------------------------------------------------------- small things
def test_a_tilde_in_a_path_option_is_the_home_folder_and_unquoted_it_gets_a_clear_error(capsys):
    import os

    from bench.cli.train import cli

    cfg = compose_cfg("data=imagefolder", "data.root='~/cells'", "paths.results_dir='~/res'",
                      "model.weights='~/w.pt'")
    home = os.path.expanduser("~")
    assert (cfg.data.root, cfg.paths.results_dir, cfg.model.weights) == (
        f"{home}/cells", f"{home}/res", f"{home}/w.pt")
    assert cli(["data=imagefolder", "data.root=~/cells"]) == 2
    err = capsys.readouterr().err
    assert "LexerNoViableAlt" not in err
    assert "\"data.root='~/cells'\"" in err and "data.root=$HOME/cells" in err


def test_a_failed_detector_row_says_detector(tmp_path):
    from bench import runs
    from bench.results.leaderboard import build_leaderboard

    exp = tmp_path / "exp"
    for model in ("fasterrcnn_mobilenet_v3_large_320_fpn", "resnet18"):
        rd = runs.RunDir.for_run(exp, model, 0)
        rd.root.mkdir(parents=True)
        rd.record_failure(RuntimeError("boom"), "", config_hash="x", model=model, seed=0, error="boom")
    board = build_leaderboard(exp)
    kinds = dict(zip(board["model"], board["kind"]))
    assert kinds == {"fasterrcnn_mobilenet_v3_large_320_fpn": "detector", "resnet18": "model"}
