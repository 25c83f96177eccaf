"""One validation pass over the config (bench.config.checks): a bad value is named with what is
valid; the defaults and every experiment are valid."""

from __future__ import annotations


import pytest

from bench.config.checks import validate_config

from tests.helpers import compose_cfg

pytestmark = pytest.mark.own_data


# --------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("override, named", [
    ("data.image_size=0", "data.image_size=0"),
    ("data.image_size=100000", "data.image_size=100000"),
    ("trainer.batch_size=0", "trainer.batch_size=0"),
    ("optim.lr=abc", "optim.lr='abc'"),
    ("optim.lr=-0.1", "optim.lr=-0.1"),
    ("trainer.select_by=val_f1", "trainer.select_by='val_f1'"),
    ("trainer.sampler=uniform", "trainer.sampler='uniform'"),
    ("data.augment.hue=0.7", "data.augment.hue=0.7"),
    ("trainer.grad_accum=64", "trainer.grad_accum=64"),
    ("data.split_fractions=[0.5,0.5]", "data.split_fractions=[0.5, 0.5]"),
])
def test_bad_values_are_named_with_what_is_valid(override, named):
    problems = validate_config(compose_cfg(override, "data.root=/data"))
    assert len(problems) == 1 and problems[0].startswith(named), problems


def test_the_defaults_and_every_experiment_are_valid():
    assert validate_config(compose_cfg()) == []
    for experiment in ("gavas2021", "quickstart", "almotairi2019", "acevedo2019_finetune"):
        assert validate_config(compose_cfg(f"experiment={experiment}", "data.root=/data")) == [], experiment
