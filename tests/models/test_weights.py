"""Pretrained and local weights (bench.models.weights): the weights tag resolved to torchvision's
enums, the cache, offline errors, fetching, local files with mismatched heads or prefixes, and
the chosen weights being the ones loaded."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision

from bench.models import PretrainedWeightsUnavailable, create_model, load_local_weights, weights as weights_mod


NUM_CLASSES = 8


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


@pytest.mark.fidelity
def test_weights_tags_resolve_to_torchvisions_enums():
    # DEFAULT is V2 for resnet50 and mobilenet_v2; alexnet has only V1.
    assert weights_mod.resolved_weights_tag("resnet50") == "IMAGENET1K_V2"
    assert weights_mod.resolved_weights_tag("resnet50", "IMAGENET1K_V1") == "IMAGENET1K_V1"
    assert weights_mod.resolved_weights_tag("mobilenet_v2") == "IMAGENET1K_V2"
    assert weights_mod.resolved_weights_tag("alexnet") == "IMAGENET1K_V1"
    v1 = torchvision.models.get_model_weights("resnet50").IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    assert weights_mod.weights_cache_path("resnet50", "IMAGENET1K_V1").name == v1
    assert weights_mod.weights_cache_path("resnet50").name != v1
    with pytest.raises(ValueError, match="IMAGENET1K_V1, IMAGENET1K_V2"):
        weights_mod.torchvision_weights("resnet50", "IMAGENET1K_V3")


@pytest.mark.fidelity
def test_the_chosen_weights_are_the_ones_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(*a, **k):
        raise OSError("simulated: no network")

    monkeypatch.setattr(weights_mod, "_download", no_network)
    torch.manual_seed(3)
    v1 = torchvision.models.get_model("mobilenet_v2", weights=None)
    path = weights_mod.weights_cache_path("mobilenet_v2", "IMAGENET1K_V1")
    path.parent.mkdir(parents=True)
    torch.save(v1.state_dict(), path)
    model = create_model("mobilenet_v2", num_classes=8, pretrained=True, weights_tag="IMAGENET1K_V1")
    assert torch.equal(model.features[0][0].weight, v1.features[0][0].weight)
    with pytest.raises(Exception, match="mobilenet_v2"):  # V2 (the latest) is not in the cache
        create_model("mobilenet_v2", num_classes=8, pretrained=True)
