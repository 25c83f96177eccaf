"""Parameters and GFLOPs (bench.models): against torchvision's published numbers and small models."""

from __future__ import annotations


import pytest

from bench.models import count_gflops, count_params, create_model


# ------------------------------------------------------------------ complexity
def test_count_params_and_gflops_resnet18():
    model = create_model("resnet18", num_classes=1000)
    assert 11.5 < count_params(model) < 11.8
    model.train()
    model.layer1.eval()  # a mixed state must survive too
    gflops = count_gflops(model, 224)
    assert 3.4 < gflops < 3.8  # ~1.82 GMACs x 2 FLOPs per multiply-add
    assert model.training and not model.layer1.training and model.layer2.training
    assert count_gflops(model, (3, 224, 224)) == pytest.approx(gflops)
    assert count_gflops(model, (448, 448)) == pytest.approx(4 * gflops, rel=0.02)  # scales with area


def test_count_gflops_keeps_eval_mode_and_small_models():
    model = create_model("simple_cnn", num_classes=8).eval()
    assert 0 < count_gflops(model, 64) < 0.5
    assert not model.training
    assert 0.3 < count_params(model) < 0.5
