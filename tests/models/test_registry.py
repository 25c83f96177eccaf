"""The model registry (bench.models): every registered classifier built from scratch and run
forward+backward in train mode on a batch of 2 small images, the heads the builders replace,
registering, listing, close matches, timm and custom models."""

from __future__ import annotations


import pytest
import torch
import torchvision
from torch import nn

from bench.models import (ModelSpec, PretrainedWeightsUnavailable, UnknownModelError, create_model, get_model_spec,
    list_models, register_model)
from bench.models._registry import _REGISTRY


torch.set_num_threads(2)
NUM_CLASSES = 8


TORCHVISION_27 = [
    "alexnet", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19",
    "vgg19_bn", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "squeezenet1_0",
    "squeezenet1_1", "densenet121", "densenet161", "densenet169", "densenet201", "inception_v3",
    "googlenet", "mobilenet_v2", "resnext50_32x4d", "resnext101_32x8d", "wide_resnet50_2",
    "wide_resnet101_2",
]  # fmt: skip


def _test_size(spec: ModelSpec) -> int:
    # Small but valid in train mode: 64 px, or the model's own minimum if larger
    # (alexnet 63 -> 64, inception_v3's aux head needs 299).
    return max(64, spec.min_train_size)


# ------------------------------------------------------------------ every model
CLASSIFIERS = [n for n in list_models() if get_model_spec(n).task == "classification"]


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_forward_backward_train_mode(name):
    torch.manual_seed(0)
    spec = get_model_spec(name)
    model = create_model(name, num_classes=NUM_CLASSES, pretrained=False)
    assert model.training
    x = torch.randn(2, 3, _test_size(spec), _test_size(spec))
    y = torch.tensor([0, NUM_CLASSES - 1])
    out = model(x)
    if spec.aux_weight:
        assert isinstance(out, torchvision.models.InceptionOutputs)
        assert out.logits.shape == (2, NUM_CLASSES)
        assert out.aux_logits.shape == (2, NUM_CLASSES)
        loss = nn.functional.cross_entropy(out.logits, y) + spec.aux_weight * nn.functional.cross_entropy(
            out.aux_logits, y
        )
    else:
        assert isinstance(out, torch.Tensor)
        assert out.shape == (2, NUM_CLASSES)
        loss = nn.functional.cross_entropy(out, y)
    assert torch.isfinite(loss)
    loss.backward()
    missing_grads = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing_grads == []


def test_inception_eval_returns_tensor_at_min_size():
    spec = get_model_spec("inception_v3")
    assert (spec.input_size, spec.min_input_size, spec.aux_weight) == (299, 75, 0.4)
    model = create_model("inception_v3", num_classes=NUM_CLASSES).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, spec.min_input_size, spec.min_input_size))
    assert isinstance(out, torch.Tensor) and out.shape == (1, NUM_CLASSES)


def test_googlenet_has_no_aux_heads():
    spec = get_model_spec("googlenet")
    assert spec.aux_weight == 0
    model = create_model("googlenet", num_classes=NUM_CLASSES)
    assert not model.aux_logits and model.aux1 is None and model.aux2 is None


@pytest.mark.parametrize(
    "name, head_path",
    [
        ("alexnet", "classifier.6"),
        ("vgg11", "classifier.6"),
        ("squeezenet1_1", "classifier.1"),
        ("densenet121", "classifier"),
        ("resnet18", "fc"),
        ("googlenet", "fc"),
        ("mobilenet_v2", "classifier.1"),
        ("inception_v3", "AuxLogits.fc"),
    ],
)
def test_head_replaced_with_kaiming_init(name, head_path):
    torch.manual_seed(0)
    head = create_model(name, num_classes=NUM_CLASSES).get_submodule(head_path)
    assert head.weight.shape[0] == NUM_CLASSES
    assert torch.count_nonzero(head.bias) == 0
    fan_in = head.weight[0].numel()
    std = head.weight.std().item()
    expected = (2.0 / fan_in) ** 0.5
    assert 0.7 * expected < std < 1.3 * expected
    if name.startswith("squeezenet"):  # ReLU + avgpool after the 1x1 conv are kept
        model = create_model(name, num_classes=NUM_CLASSES)
        assert isinstance(model.classifier[2], nn.ReLU)
        assert isinstance(model.classifier[3], nn.AdaptiveAvgPool2d)


def test_the_spec_names_the_head_that_the_builder_replaced():
    # One table: the head path a builder replaces is its spec's ``head``, and bench.models.heads
    # (MLP heads, freezing) reads that same field. Built on the meta device: no memory, no time.
    from bench.models.heads import head_path

    for name in CLASSIFIERS:
        spec = get_model_spec(name)
        assert spec.head, f"{name} is registered without its head"
        with torch.device("meta"):
            model = create_model(name, num_classes=NUM_CLASSES)
        head = model.get_submodule(spec.head)
        assert head_path(model, name) == spec.head
        out = head.out_channels if isinstance(head, nn.Conv2d) else head.out_features
        assert out == NUM_CLASSES, name


# ------------------------------------------------------------------ registry
def test_all_torchvision_models_registered():
    names = list_models()
    for n in TORCHVISION_27:
        assert n in names
        assert get_model_spec(n).source == "torchvision"
    assert "simple_cnn" in names
    assert names == sorted(names)
    assert get_model_spec("simple_cnn").input_size == 64
    assert all(get_model_spec(n).input_size == 224 for n in TORCHVISION_27 if n != "inception_v3")


def test_register_duplicate_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet18")(lambda num_classes, pretrained=False: nn.Linear(1, num_classes))


def test_register_custom_model_and_create():
    @register_model("tiny_test_net", input_size=32, min_input_size=8, family="test")
    def tiny(num_classes, pretrained=False):
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    try:
        spec = get_model_spec("tiny_test_net")
        assert (spec.source, spec.family, spec.input_size) == ("custom", "test", 32)
        assert "tiny_test_net" in list_models("tiny_*")
        out = create_model("tiny_test_net", num_classes=3)(torch.randn(2, 3, 4, 4))
        assert out.shape == (2, 3)
    finally:
        _REGISTRY.pop("tiny_test_net", None)


def test_list_models_pattern():
    assert list_models("vgg*") == sorted(n for n in TORCHVISION_27 if n.startswith("vgg"))
    assert list_models("*_bn") == ["vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]
    assert list_models("densenet1?1") == ["densenet121", "densenet161"]
    assert list_models("nothing*") == []
    timm_names = list_models("timm/resnet1*t")
    assert "timm/resnet10t" in timm_names and all(n.startswith("timm/") for n in timm_names)


def test_unknown_model_lists_close_matches():
    with pytest.raises(UnknownModelError) as info:
        get_model_spec("resnet19")
    msg = str(info.value)
    assert "resnet18" in msg and "bench-models" in msg
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnknownModelError, match="densenet121"):
        create_model("densnet121", num_classes=NUM_CLASSES)
    with pytest.raises(UnknownModelError, match="bench-models"):
        get_model_spec("timm/definitely_not_a_model")


def test_timm_model_builds():
    spec = get_model_spec("timm/resnet10t")
    assert spec.source == "timm" and spec.name == "timm/resnet10t"
    assert spec.input_size == 176  # timm's pretrained_cfg
    model = create_model("timm/resnet10t", num_classes=NUM_CLASSES)
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, NUM_CLASSES)
    out.sum().backward()


def test_custom_model_has_no_pretrained_weights():
    with pytest.raises(PretrainedWeightsUnavailable, match="no pretrained weights"):
        create_model("simple_cnn", num_classes=NUM_CLASSES, pretrained=True)


def test_cli_lists_models(capsys):
    from bench.cli.models import main

    assert main(["resnet*"]) == 0
    out = capsys.readouterr().out
    assert "resnet18" in out and "torchvision" in out and "224" in out and "vgg11" not in out
    assert main(["no_such_model*"]) == 1
