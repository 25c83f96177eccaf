"""The recipe a run is compared with (bench.config.recipe): each published protocol as its paper
ran it, checked against the paper's own numbers (quoted here) and not the code; every setting that
changes results is compared, models the paper did not run and detector recipes are named, and
keys that change no number are marked once with a reason."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from bench import config as config_mod
from bench.config.recipe import protocol_deviations, recipe_of

from tests.helpers import compose_cfg


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


@pytest.mark.fidelity
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


@pytest.mark.fidelity
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


@pytest.mark.fidelity
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


@pytest.mark.fidelity
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


@pytest.mark.fidelity
def test_a_variants_declaration_on_model_name_does_not_hide_a_model_the_paper_did_not_run():
    found = protocol_deviations(compose_cfg("experiment=scratch_vs_pretrained", "variant=frozen", "data.root=/d",
                                            "model.name=resnet18"))
    assert "model=resnet18 (paper: one of the 8 models of experiment=scratch_vs_pretrained/frozen)" in found


@pytest.mark.fidelity
def test_detector_runs_are_compared_with_their_recipe_and_only_then():
    quick = compose_cfg("experiment=detect_quickstart")
    assert recipe_of(quick) is None and protocol_deviations(quick) is None  # no published detection recipe
    cheuque = compose_cfg("experiment=cheuque2022_detector")
    declared = list(cheuque.recipe.departures)
    assert declared and protocol_deviations(cheuque) == declared
    assert protocol_deviations(compose_cfg("experiment=cheuque2022_detector", "trainer.epochs=3")) == [
        *declared, "trainer.epochs=3 (paper: 12)"]


# --------------------------------------------------------------------------- readings of the papers
@pytest.mark.fidelity
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


@pytest.mark.fidelity
def test_almotairi_and_cheuque_on_pbc_declare_the_data_as_a_departure():
    almotairi = protocol_deviations(compose_cfg("experiment=almotairi2019", "data.root=/d"))
    assert almotairi == ["the images of data.root, e.g. PBC's five white-cell classes (paper: its own Dataset1, "
                         "320 images of 70 x 70 px, and Dataset2)"]
    cheuque = protocol_deviations(compose_cfg("experiment=cheuque2022_two_level", "data.root=/d"))
    assert any("LISC" in d for d in cheuque)


@pytest.mark.fidelity
def test_gavas_whole_image_view_is_the_offered_alternative_and_a_departure():
    assert protocol_deviations(compose_cfg(*GAVAS, "data.geometry=resize")) == [
        "data.geometry=resize (paper: resize_crop)"]


@pytest.mark.fidelity
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


# --------------------------------------------------------------------------- Gavas & Olpadkar 2021
@pytest.mark.fidelity
def test_the_gavas2021_experiment_is_the_papers_recipe():
    cfg = compose_cfg("experiment=gavas2021", "data.root=/data", "model=resnet50")
    assert cfg.model.pretrained and cfg.model.weights_tag == "IMAGENET1K_V1"
    assert cfg.trainer.amp is False  # fp32
    assert cfg.optim._target_ == "torch.optim.SGD" and cfg.optim.lr == 1e-3 and cfg.optim.momentum == 0.9
    assert cfg.sched.step_size == 7 and cfg.sched.gamma == 0.1 and cfg.trainer.epochs == 25
    assert cfg.trainer.batch_size == 32 and list(cfg.data.split_fractions) == [0.64, 0.24, 0.12]
    assert cfg.data.split_rounding == "ceil" and cfg.data.geometry == "resize_crop" and cfg.data.crop_fraction == 0.875
    assert cfg.data.augment.hflip and cfg.data.augment.vflip and cfg.data.augment.rotation == 60


@pytest.mark.fidelity
def test_departures_from_the_paper_are_named():
    follows = compose_cfg("experiment=gavas2021", "data.root=/d", "model=resnet50")
    assert protocol_deviations(follows, precision="fp32") == []
    latest = compose_cfg("experiment=gavas2021", "data.root=/d", "model=resnet50", "model.weights_tag=null")
    assert protocol_deviations(latest) == ["model.weights_tag=IMAGENET1K_V2 (paper: IMAGENET1K_V1)"]
    # alexnet's latest weights are its V1: asking for the latest is no departure there.
    assert protocol_deviations(compose_cfg("experiment=gavas2021", "data.root=/d", "model=alexnet",
                                           "model.weights_tag=null")) == []
    assert protocol_deviations(follows, precision="bf16") == ["precision=bf16 (paper: fp32)"]
    stretched = compose_cfg("experiment=gavas2021", "data.root=/d", "model=resnet50", "data.geometry=resize",
                            "data.split_rounding=round")
    assert set(protocol_deviations(stretched)) == {"data.geometry=resize (paper: resize_crop)",
                                                   "data.split_rounding=round (paper: ceil)"}


@pytest.mark.fidelity
def test_almotairi_uses_the_five_white_cell_classes():
    cfg = compose_cfg("experiment=almotairi2019", "data.root=/d")
    assert list(cfg.data.classes) == ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    declared = list(cfg.recipe.departures)  # the data: their own datasets, not PBC (issue 24)
    assert protocol_deviations(cfg) == declared
    assert protocol_deviations(compose_cfg("experiment=almotairi2019", "data.root=/d", "trainer.epochs=3")) == [
        *declared, "trainer.epochs=3 (paper: 40)"]


@pytest.mark.fidelity
@pytest.mark.parametrize("model", ["vgg16", "inception_v3"])
def test_acevedo_finetune_departs_only_in_the_split(model):
    ft = protocol_deviations(compose_cfg("experiment=acevedo2019_finetune", "data.root=/d", f"model={model}"))
    assert ft == ["the harness's 64/24/12 split (paper: its own split of the PBC images)"]
    changed = protocol_deviations(compose_cfg("experiment=acevedo2019_finetune", "data.root=/d", f"model={model}",
                                              "trainer.balance_to=null", "model.trainable_conv_blocks=2"))
    assert "trainer.balance_to=none (paper: 4096)" in changed
    assert "model.trainable_conv_blocks=2 (paper: 4)" in changed
    svm = compose_cfg("experiment=acevedo2019_svm", "data.root=/d")
    assert svm.svm.coef0 == 0.0 and svm.svm.balance_to == 4608
    assert any("88/12" in d for d in protocol_deviations(svm))


# --------------------------------------------------------------------------- what a run is compared with
@pytest.mark.fidelity
@pytest.mark.parametrize("variant", ["frozen", "scratch"])
def test_a_variant_run_is_compared_with_its_variant_of_the_recipe(variant):
    # The paper's two variants (issue 14): frozen = ImageNet weights, backbone frozen, the new head;
    # scratch = random initialisation, the stock architecture. Neither departs from its own recipe.
    cfg = compose_cfg("experiment=scratch_vs_pretrained", f"variant={variant}", "data.root=/d", "model=vgg16")
    found = protocol_deviations(cfg)
    # VGG16's frozen head reads the flattened 7x7x512 map as the paper's (model.head_keep_fc=0); the
    # scratch run is the stock architecture. A frozen ResNet50 reads pooled features: declared.
    assert found == []
    resnet = protocol_deviations(compose_cfg("experiment=scratch_vs_pretrained", f"variant={variant}",
                                             "data.root=/d", "model.name=resnet50"))
    assert resnet == {"frozen": [
        "model.name=resnet50|inception_v3|timm/legacy_xception|densenet121|densenet169|densenet201 (paper: the "
        "head on the flattened last convolutional map; this model's head reads its pooled features)"],
        "scratch": []}[variant]
    # A change inside a variant is still a departure from that variant.
    assert protocol_deviations(compose_cfg("experiment=scratch_vs_pretrained", f"variant={variant}",
                                           "data.root=/d", "model=vgg16", "trainer.epochs=5")) == [
        *found, "trainer.epochs=5 (paper: 100)"]


@pytest.mark.fidelity
def test_cheuque_levels_and_folds_follow_the_paper():
    from bench.config.plans import plan_folds
    from bench.config.plans import level_configs

    cfg = compose_cfg("experiment=cheuque2022_two_level", "data.root=/d")
    declared = list(cfg.recipe.departures)
    fold = plan_folds(cfg)[3].cfg  # bench-cv: Monte Carlo repetition 3 of 10 (their protocol)
    level1, level2 = level_configs(fold)
    assert list(level1.data.classes) == ["lymphocyte", "monocyte", "neutrophil", "eosinophil"]  # derived ...
    for run in (fold, level1, *level2.values()):  # ... but the two-level protocol itself: no departure
        assert protocol_deviations(run) == declared
    # Other groups change the levels: a departure, named.
    moved = compose_cfg("experiment=cheuque2022_two_level", "data.root=/d",
                        "two_level.groups.mononuclear=[lymphocyte,monocyte,basophil]")
    found = protocol_deviations(level_configs(plan_folds(moved)[0].cfg)[0])
    assert "data.class_map.basophil=mononuclear (paper: none)" in found
    assert "two_level.groups.mononuclear=[lymphocyte, monocyte, basophil] (paper: [lymphocyte, monocyte])" in found


@pytest.mark.fidelity
def test_converted_weights_lift_cheuques_declared_no_imagenet_departure():
    from bench.config.plans import level_configs

    without = protocol_deviations(compose_cfg("experiment=cheuque2022_two_level", "data.root=/d"))
    assert any(d.startswith("model.weights=none (paper: ImageNet") for d in without)
    cfg = compose_cfg("experiment=cheuque2022_two_level", "data.root=/d", "model.weights=/w/mobilenet_050_keras.pt")
    level1, level2 = level_configs(cfg)
    for run in (cfg, level1, *level2.values()):
        found = protocol_deviations(run)
        assert not any("ImageNet" in d or d.startswith("model.weights") for d in found), found
        assert any("Faster R-CNN" in d for d in found)  # the other declared departure still holds


@pytest.mark.fidelity
def test_acevedo_svm_is_scikit_learns_defaults_and_its_options_are_compared():
    svm = compose_cfg("experiment=acevedo2019_svm", "data.root=/d")
    # scikit-learn's SVC defaults (C=1.0, coef0=0.0), no scaling, as the paper.
    from sklearn.svm import SVC

    assert list(svm.svm.c_grid) == [SVC().C] and svm.svm.coef0 == SVC().coef0 and svm.svm.standardize is False
    declared = protocol_deviations(svm, model="vgg16")
    assert svm.model.head_keep_fc == 1  # fc6: the reading of the paper's "4,096 features" (issue 24)
    changed = protocol_deviations(compose_cfg("experiment=acevedo2019_svm", "data.root=/d", "svm.balance_to=null",
                                              "svm.coef0=1", "svm.kernels=[rbf]", "svm.c_grid=[1,10]",
                                              "svm.standardize=true"), model="vgg16")
    assert set(changed) - set(declared) == {
        "svm.balance_to=none (paper: 4608)", "svm.coef0=1.0 (paper: 0.0)", "svm.kernels=[rbf] (paper: [rbf, cubic])",
        "svm.c_grid=[1.0, 10.0] (paper: [1.0])", "svm.standardize=true (paper: false)"}


def test_the_published_sweep_follows_the_published_protocol():
    sweep = compose_cfg("experiment=gavas2021", "data.root=/data", return_hydra_config=True)
    models = str(sweep.hydra.sweeper.params.model).split(",")
    assert len(models) == 27
    for model in models:
        assert protocol_deviations(compose_cfg("experiment=gavas2021", "data.root=/data", f"model={model}")) == []
    changed = compose_cfg("experiment=gavas2021", "data.root=/data", "model=inception_v3", "data.image_size=224",
                          "optim=adam", "sched=cosine")
    found = protocol_deviations(changed)
    assert "data.image_size=224 (paper: 299)" in found
    assert "optim._target_=torch.optim.Adam (paper: torch.optim.SGD)" in found
    assert any(d.startswith("sched._target_=") for d in found)
