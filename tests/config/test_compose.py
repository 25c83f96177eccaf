"""Composing the config (bench.config.compose): every experiment and group option composes to its
file, the defaults are the published protocol, typos fail at compose, the default experiment name
follows the data, a ``~`` in a path option is the home folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError

from bench.config import CONF_DIR

from tests.helpers import compose_cfg


CONF = Path(CONF_DIR)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


# --------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_composes(experiment):
    cfg = compose_cfg(f"experiment={experiment}", "data.root=/data")
    assert cfg.experiment_name == experiment


@pytest.mark.parametrize(
    "group, option",
    [(g, o) for g in ("data", "optim", "sched", "trainer") for o in _options(g)],
)
def test_every_group_option_composes_to_its_file(group, option):
    # Every value written in the option's YAML file (read here directly) is what the composed
    # config holds; a schema default silently winning over the file would show.
    cfg = compose_cfg(f"{group}={option}", "data.root=/data")
    written = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{option}.yaml"), resolve=False)
    composed = OmegaConf.to_container(cfg[group], resolve=False)
    for key, value in written.items():
        if value != "???":
            assert composed[key] == value, f"{group}={option}: {key}"


@pytest.mark.parametrize("model", ["inception_v3", "vgg19_bn", "simple_cnn"])
def test_a_model_option_selects_that_model(model):
    cfg = compose_cfg(f"model={model}")
    assert cfg.model.name == model and cfg.model.pretrained is True


def test_defaults_are_the_published_protocol():
    cfg = compose_cfg()
    assert cfg.optim._target_ == "torch.optim.SGD" and cfg.optim.lr == 1e-3 and cfg.optim.momentum == 0.9
    assert cfg.optim.weight_decay == 0.0
    assert cfg.sched.step_size == 7 and cfg.sched.gamma == 0.1
    assert cfg.trainer.epochs == 25 and cfg.trainer.batch_size == 32
    assert cfg.model.pretrained is True
    assert list(cfg.data.split_fractions) == [0.64, 0.24, 0.12]


@pytest.mark.parametrize("bad", ["trainer.epocs=3", "data.image_sise=64", "modle.name=resnet18"])
def test_typo_in_a_key_fails_at_compose(bad):
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        compose_cfg(bad)


@pytest.mark.own_data
def test_the_default_experiment_is_named_after_the_data():
    from bench.config import default_experiment_name

    a = default_experiment_name("imagefolder", "/data/lab1/images")
    b = default_experiment_name("imagefolder", "/data/lab2/images")
    assert a.startswith("images-") and b.startswith("images-") and a != b
    assert compose_cfg().experiment_name == "synthetic"
    assert compose_cfg("data=imagefolder", "data.root=/data/lab1/images").experiment_name == a
    assert compose_cfg("experiment=gavas2021", "data.root=/x").experiment_name == "gavas2021"


# --------------------------------------------------------------------------- small things
@pytest.mark.fidelity
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
