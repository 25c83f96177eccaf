"""Tests for bench.models: registry, every registered model, weights, complexity.

CPU only; every registered model is built from scratch and run forward+backward in
train mode on a batch of 2 small images.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision
from torch import nn

from bench.models import (
    ModelSpec,
    PretrainedWeightsUnavailable,
    UnknownModelError,
    count_gflops,
    count_params,
    create_model,
    get_model_spec,
    list_models,
    load_local_weights,
    register_model,
)
from bench.models import weights as weights_mod
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
DETECTORS = [n for n in list_models() if get_model_spec(n).task == "detection"]


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


# ------------------------------------------------------------------ pretrained weights


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def test_weights_cache_path(torch_home):
    path = weights_mod.weights_cache_path("resnet18")
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    assert path == torch_home / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    assert weights_mod.weights_cache_path("simple_cnn") is None


def test_pretrained_offline_raises_clear_error(torch_home, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("simulated: no network")

    monkeypatch.setattr(weights_mod, "_download", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    expected = weights_mod.weights_cache_path("squeezenet1_1")
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        create_model("squeezenet1_1", num_classes=NUM_CLASSES, pretrained=True)
    msg = str(info.value)
    assert "squeezenet1_1" in msg
    assert str(expected) in msg
    assert "bench-fetch-weights" in msg and "model.pretrained=false" in msg
    assert isinstance(info.value, RuntimeError)
    assert not expected.exists()


@pytest.mark.parametrize("name", ["resnet18", "inception_v3"])
def test_pretrained_from_cache(torch_home, monkeypatch, name):
    def no_network(*args, **kwargs):
        raise AssertionError("must not download when the file is cached")

    monkeypatch.setattr(weights_mod, "_download", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    torch.manual_seed(1)
    # An ImageNet-headed (1000 classes), randomly initialised model stands in for the weights.
    kwargs = {"aux_logits": True, "init_weights": False} if name == "inception_v3" else {}
    imagenet = torchvision.models.get_model(name, weights=None, **kwargs)
    path = weights_mod.weights_cache_path(name)
    path.parent.mkdir(parents=True)
    torch.save(imagenet.state_dict(), path)

    model = create_model(name, num_classes=NUM_CLASSES, pretrained=True)
    backbone = "conv1.weight" if name == "resnet18" else "Conv2d_1a_3x3.conv.weight"
    assert torch.equal(model.state_dict()[backbone], imagenet.state_dict()[backbone])
    assert model.fc.out_features == NUM_CLASSES
    if name == "inception_v3":
        assert model.transform_input  # torchvision's setting for its ImageNet weights
        assert model.AuxLogits.fc.out_features == NUM_CLASSES
        assert torch.equal(model.AuxLogits.conv0.conv.weight, imagenet.AuxLogits.conv0.conv.weight)


def test_fetch_weights_downloads_into_cache(torch_home, monkeypatch):
    calls = []

    def fake_download(url, dst, *, hash_prefix, progress):
        calls.append((url, hash_prefix))
        torch.save({"x": torch.zeros(1)}, dst)

    monkeypatch.setattr(weights_mod, "_download", fake_download)
    path = weights_mod.fetch_weights("resnet18", progress=False)
    assert path == weights_mod.weights_cache_path("resnet18") and path.is_file()
    assert calls and calls[0][1] and calls[0][1] in path.name  # sha256 prefix from the name
    weights_mod.fetch_weights("resnet18", progress=False)
    assert len(calls) == 1  # already cached


# ------------------------------------------------------------------ local weights


def test_load_local_weights_skips_mismatched_head(tmp_path, caplog):
    torch.manual_seed(0)
    src = create_model("resnet18", num_classes=8)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": src.state_dict(), "epoch": 3}, ckpt)

    dst = create_model("resnet18", num_classes=5)
    report = load_local_weights(dst, ckpt)
    assert torch.equal(dst.conv1.weight, src.conv1.weight)
    assert torch.equal(dst.layer4[1].bn2.running_var, src.layer4[1].bn2.running_var)
    assert set(report["skipped"]) == {"fc.weight", "fc.bias"}
    assert report["skipped"]["fc.weight"] == ((8, 512), (5, 512))
    assert report["loaded"] == len(src.state_dict()) - 2
    assert not report["missing"] or set(report["missing"]) == {"fc.weight", "fc.bias"}
    assert report["unexpected"] == []

    with caplog.at_level(logging.INFO, logger="bench.models"):
        model = create_model("resnet18", num_classes=5, weights=ckpt)
    assert torch.equal(model.conv1.weight, src.conv1.weight)
    assert "fc.weight" in caplog.text and "loaded" in caplog.text


def test_load_local_weights_raw_state_dict_with_prefixes(tmp_path):
    torch.manual_seed(0)
    src = create_model("simple_cnn", num_classes=8)
    sd = {"_orig_mod.module." + k: v for k, v in src.state_dict().items()}
    sd["module.extra.weight"] = torch.zeros(3)
    path = tmp_path / "raw.pth"
    torch.save(sd, path)
    dst = create_model("simple_cnn", num_classes=8)
    report = load_local_weights(dst, path)
    assert report["loaded"] == len(src.state_dict())
    assert report["skipped"] == {} and report["missing"] == []
    assert report["unexpected"] == ["extra.weight"]
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)


def test_load_local_weights_missing_file(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="model.weights") as info:
        create_model("simple_cnn", num_classes=8, weights=missing)
    assert str(missing) in str(info.value)


def test_load_local_weights_wrong_architecture(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"model": {"foo.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(ValueError, match="no tensor matches"):
        load_local_weights(create_model("simple_cnn", num_classes=8), path)


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


@pytest.mark.parametrize("name, pretrained, expected", [("inception_v3", True, True), ("googlenet", True, True),
                                                         ("inception_v3", False, False), ("resnet18", True, False)])
def test_a_rebuilt_checkpoint_converts_its_input_as_its_imagenet_start_did(name, pretrained, expected):
    # torchvision builds inception_v3 / googlenet with transform_input=True only with ImageNet
    # weights; every rebuild of a fine-tuned checkpoint (bench-predict, the two-level classifier)
    # must do the same, or its inputs are normalised the wrong way.
    from bench.training.checkpoints import rebuild_model

    torch.manual_seed(0)
    model = create_model(name, num_classes=3, pretrained=False)
    ckpt = {"model": model.state_dict(), "model_name": name, "class_names": ["a", "b", "c"], "pretrained": pretrained}
    rebuilt = rebuild_model(ckpt)
    assert getattr(rebuilt, "transform_input", False) is expected
    assert not rebuilt.training


def test_the_detection_zoo_is_in_the_registry():
    assert sorted(DETECTORS) == sorted([
        "fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn",
        "fasterrcnn_mobilenet_v3_large_320_fpn", "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2",
        "fcos_resnet50_fpn", "ssd300_vgg16", "ssdlite320_mobilenet_v3_large"])


@pytest.mark.parametrize("name", DETECTORS)
def test_every_detector_trains_a_step_and_predicts_the_datasets_classes(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, pretrained=False, image_size=128)
    images = [torch.rand(3, 128, 128), torch.rand(3, 128, 128)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([3])},
               {"boxes": torch.tensor([[30.0, 40.0, 90.0, 100.0]]), "labels": torch.tensor([1])}]
    losses = model(images, targets)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and set(out[0]) >= {"boxes", "labels", "scores"}
    assert all(int(label) in (1, 2, 3) for p in out for label in p["labels"])  # background 0 is never a box


def test_a_detectors_coco_weights_load_and_its_class_layers_are_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(weights_mod, "_download", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    name = "fasterrcnn_mobilenet_v3_large_320_fpn"
    coco = torchvision.models.get_model_weights(name).DEFAULT
    torch.manual_seed(1)
    stand_in = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None,
                                                                                  num_classes=91)
    path = tmp_path / "torch" / "hub" / "checkpoints" / coco.url.rsplit("/", 1)[-1]
    path.parent.mkdir(parents=True)
    torch.save(stand_in.state_dict(), path)
    model = create_model(name, num_classes=3, pretrained=True, image_size=128)
    key = "backbone.body.0.0.weight"
    assert torch.equal(model.state_dict()[key], stand_in.state_dict()[key])  # the COCO backbone
    assert model.roi_heads.box_predictor.cls_score.out_features == 4  # 3 classes + background
    with pytest.raises(PretrainedWeightsUnavailable, match="retinanet_resnet50_fpn"):
        create_model("retinanet_resnet50_fpn", num_classes=3, pretrained=True, image_size=128)
