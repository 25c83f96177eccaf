"""Your own architecture without editing bench: a plugin through an entry point or an environment
variable trains and predicts, a broken plugin is reported and skipped."""

from __future__ import annotations

import sys

import pytest




# --------------------------------------------------------------------------- your own architecture
LAB_NETS = '''
import torch.nn as nn
from bench.models import register_model


@register_model("lab_cnn", input_size=32, min_input_size=8, family="lab")
def lab_cnn(num_classes, pretrained=False):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, num_classes))
'''


@pytest.mark.parametrize("how", ["entry_point", "env"])
def test_your_own_architecture_trains_and_predicts_without_editing_bench(tmp_path, cache_dir, monkeypatch, how):
    from bench.models import _registry, list_models, load_plugins
    from bench.predict.checkpoints import load_checkpoint
    from bench.cli.train import cli

    from tests.helpers import SMOKE_OVERRIDES

    pkg = tmp_path / "site"
    pkg.mkdir()
    (pkg / "lab_nets.py").write_text(LAB_NETS)
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))  # undone after the test
    monkeypatch.delitem(sys.modules, "lab_nets", raising=False)
    if how == "entry_point":  # what `pip install my_lab` with [project.entry-points."bench.models"] leaves
        info = pkg / "lab_nets-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lab-nets\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text("[bench.models]\nlab = lab_nets\n")
    else:
        monkeypatch.setenv("BENCH_MODELS", "lab_nets")
    assert "lab_nets" in load_plugins() and "lab_cnn" in list_models()

    overrides = [o for o in SMOKE_OVERRIDES if not o.startswith("model=")]
    assert cli(["model=lab_cnn", *overrides, "trainer.epochs=1", f"paths.results_dir={tmp_path / 'r'}",
                f"paths.cache_dir={cache_dir}"]) == 0
    best = tmp_path / "r" / "synthetic" / "runs" / "lab_cnn" / "seed0" / "best.pt"
    assert load_checkpoint(best).model_name == "lab_cnn"  # bench-predict rebuilds it from the checkpoint


def test_a_broken_plugin_is_reported_and_skipped(monkeypatch, caplog):
    from bench.models import list_models, load_plugins

    monkeypatch.setenv("BENCH_MODELS", "no_such_module_anywhere")
    assert load_plugins() == []
    assert "BENCH_MODELS=no_such_module_anywhere" in caplog.text
    assert "resnet18" in list_models()
