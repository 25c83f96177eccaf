"""A run's identity hash (bench.config.run_identity): keys that change results change it, keys
that do not stay out of it, and new options at their neutral value (or a schedule whose code
moved) keep the hash of runs written before them."""

from __future__ import annotations

import json

import pytest

from bench.config import run_identity

from tests.helpers import compose_cfg

pytestmark = pytest.mark.own_data


def test_new_options_at_their_neutral_value_keep_old_run_identities():
    # A run written before select_by / class_weights / sampler / colour jitter existed has a
    # config without them; at the values that do what the old code did, the hash is unchanged.
    cfg = compose_cfg()
    container, chash = run_identity(cfg)
    old = json.loads(json.dumps(container))
    for key in ("select_by", "class_weights", "sampler"):
        del old["trainer"][key]
    for key in ("brightness", "contrast", "saturation", "hue"):
        del old["data"]["augment"][key]
    from omegaconf import OmegaConf

    assert run_identity(OmegaConf.create(old))[1] == chash
    assert run_identity(compose_cfg("trainer.select_by=val_balanced_acc"))[1] != chash
    assert run_identity(compose_cfg("data.augment.hue=0.05"))[1] != chash


def test_a_schedule_whose_code_moved_keeps_the_identity_it_was_first_hashed_with():
    # The Keras decay schedule moved from bench.schedules to bench.training.schedules (issue 26): a run
    # hashed with the old _target_ must keep its hash, or every finished scratch_vs_pretrained run retrains.
    from omegaconf import OmegaConf

    cfg = compose_cfg("sched=inverse_time")
    assert cfg.sched._target_ == "bench.training.schedules.inverse_time"
    old = OmegaConf.to_container(cfg, resolve=True)
    old["sched"]["_target_"] = "bench.schedules.inverse_time"
    assert run_identity(OmegaConf.create(old))[1] == run_identity(cfg)[1]
    assert run_identity(compose_cfg("sched=inverse_time", "sched.decay=0.5"))[1] != run_identity(cfg)[1]


@pytest.mark.parametrize("override", ["trainer.progress=false", "trainer.num_threads=1", "trainer.checkpoint_every_s=5",
                                      "data.store=mmap", "data.decode_workers=3", "paths.results_dir=/elsewhere",
                                      "logger=csv", "svm.n_jobs=2", "cv.folds=5", "two_level.enabled=true"])
def test_keys_that_never_change_results_stay_out_of_every_identity(override):
    from bench.protocols import svm_features

    assert run_identity(compose_cfg(override))[1] == run_identity(compose_cfg())[1]
    # The SVM protocol reads the data keys by the same rule (it hashed data.store before).
    svm = ("experiment=acevedo2019_svm", "data.root=/d")
    assert svm_features.identity(compose_cfg(*svm, override), "vgg16", "rbf") == svm_features.identity(
        compose_cfg(*svm), "vgg16", "rbf")


@pytest.mark.parametrize("override", ["trainer.balance_to=100", "model.head_keep_fc=1", "model.trainable_conv_blocks=2",
                                      "model.weights_tag=IMAGENET1K_V1", "trainer.epochs=3", "data.split_seed=1"])
def test_keys_that_change_results_change_every_identity(override):
    from bench.protocols import svm_features

    assert run_identity(compose_cfg(override))[1] != run_identity(compose_cfg())[1]
    if override.startswith(("model.weights_tag", "data.")):  # what an SVM run reads
        svm = ("experiment=acevedo2019_svm", "data.root=/d")
        assert svm_features.identity(compose_cfg(*svm, override), "vgg16", "rbf") != svm_features.identity(
            compose_cfg(*svm), "vgg16", "rbf")
