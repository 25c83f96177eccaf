"""Heads and freezing (bench.models.heads): MLP heads, frozen backbones, trainable blocks, cut
fully connected layers, and the published heads counted parameter by parameter (Cheuque's
MobileNet, Acevedo's VGG16 and Inception v3, the frozen VGG head of scratch vs pretrained).

Architecture checks build the big networks on the meta device (shapes, no memory, no compute)."""

from __future__ import annotations


import pytest
import torch
import torchvision
from torch import nn

from bench.config.recipe import protocol_deviations
from bench.models import create_model
from bench.models.blocks import freeze_backbone, head_path, list_blocks, set_trainable_blocks
from bench.models.heads import apply_head, configure_model, match_state_dict

from tests.helpers import compose_cfg


NUM_CLASSES = 8


def _meta_model(name: str) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, num_classes=NUM_CLASSES, pretrained=False)


def _trainable_roots(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------- heads and freezing
@pytest.mark.parametrize("name,in_features,size", [("vgg16", 4096, 224), ("inception_v3", 2048, 299),
                                                    ("resnet50", 2048, 224)])
def test_mlp_head_shapes(name, in_features, size):
    model = _meta_model(name)
    apply_head(model, name, NUM_CLASSES, [1024], 0.5)
    head = model.get_submodule(head_path(model, name))
    assert [type(m) for m in head] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert (head[0].in_features, head[0].out_features) == (in_features, 1024)
    assert (head[3].in_features, head[3].out_features) == (1024, NUM_CLASSES)
    assert head[2].p == 0.5
    model.train()
    out = model(torch.empty(2, 3, size, size, device="meta"))
    assert isinstance(out, torch.Tensor) and out.shape == (2, NUM_CLASSES)  # inception: aux head removed


@pytest.mark.parametrize("name", ["vgg16", "inception_v3", "resnet50"])
def test_freeze_backbone_leaves_only_the_head_trainable(name):
    model = _meta_model(name)
    apply_head(model, name, NUM_CLASSES, [256], 0.5)
    freeze_backbone(model, name)
    path = head_path(model, name)
    trainable = _trainable_roots(model)
    head_params = {f"{path}.{n}" for n, _ in model.get_submodule(path).named_parameters()}
    assert trainable == head_params and len(head_params) == 4
    model.train()
    pinned = [m for n, m in model.named_modules() if isinstance(m, (nn.BatchNorm2d, nn.Dropout))
              and not n.startswith(path)]
    assert all(not m.training for m in pinned)  # frozen BN statistics and dropout stay in eval mode
    assert model.get_submodule(path)[2].training  # the head's own dropout trains


def test_trainable_blocks_vgg16():
    model = _meta_model("vgg16")
    assert [b.name for b in list_blocks(model, "vgg16")] == [
        "stage1", "stage2", "stage3", "stage4", "stage5", "classifier"]
    apply_head(model, "vgg16", NUM_CLASSES, [1024], 0.0)
    set_trainable_blocks(model, "vgg16", 2)
    layers = {n.rsplit(".", 1)[0] for n in _trainable_roots(model)}
    # conv stage 5 = features 24, 26, 28 (then its MaxPool 30); fc6, fc7; the MLP head.
    assert layers == {"features.24", "features.26", "features.28", "classifier.0", "classifier.3",
                      "classifier.6.0", "classifier.6.2"}
    model.train()
    assert model.classifier[2].training  # dropout of a trainable block trains
    set_trainable_blocks(model, "vgg16", 1)
    assert {n.rsplit(".", 1)[0] for n in _trainable_roots(model)} == {
        "classifier.0", "classifier.3", "classifier.6.0", "classifier.6.2"}


def test_trainable_blocks_resnet18():
    model = _meta_model("resnet18")
    assert [b.name for b in list_blocks(model, "resnet18")] == ["conv1", "layer1", "layer2", "layer3", "layer4"]
    all_params = {n for n, _ in model.named_parameters()}
    for n, expected_roots in [(0, ("fc",)), (1, ("layer4", "fc")), (2, ("layer3", "layer4", "fc"))]:
        set_trainable_blocks(model, "resnet18", n)
        assert _trainable_roots(model) == {p for p in all_params if p.split(".")[0] in expected_roots}
        model.train()
        for name, m in model.named_modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.training == (name.split(".")[0] in expected_roots), name
    set_trainable_blocks(model, "resnet18", 5)
    assert _trainable_roots(model) == all_params
    model.train()
    assert all(m.training for m in model.modules())


def test_configure_model_defaults_change_nothing_and_contradictions_fail():
    cfg = compose_cfg("model=resnet18")
    model = _meta_model("resnet18")
    before = [n for n, _ in model.named_parameters()]
    configure_model(model, cfg.model, num_classes=NUM_CLASSES)
    assert [n for n, _ in model.named_parameters()] == before
    assert all(p.requires_grad for p in model.parameters())
    bad = compose_cfg("model=resnet18", "model.freeze_backbone=true", "model.trainable_blocks=2")
    with pytest.raises(ValueError, match="contradict"):
        configure_model(model, bad.model, num_classes=NUM_CLASSES)


def test_match_state_dict_rebuilds_an_mlp_head():
    torch.manual_seed(0)
    trained = create_model("resnet18", num_classes=NUM_CLASSES, pretrained=False)
    apply_head(trained, "resnet18", NUM_CLASSES, [32, 16], 0.5)
    fresh = create_model("resnet18", num_classes=NUM_CLASSES, pretrained=False)
    match_state_dict(fresh, "resnet18", trained.state_dict())
    fresh.load_state_dict(trained.state_dict())  # strict
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(fresh.eval()(x), trained.eval()(x))


@pytest.mark.parametrize("keep_fc,linears", [(0, [(25088, 64), (64, NUM_CLASSES)]),
                                              (1, [(25088, 4096), (4096, 64), (64, NUM_CLASSES)]),
                                              (2, [(25088, 4096), (4096, 4096), (4096, 64), (64, NUM_CLASSES)])])
def test_head_keep_fc_cuts_vggs_fully_connected_layers(keep_fc, linears):
    model = _meta_model("vgg16")
    apply_head(model, "vgg16", NUM_CLASSES, [64], 0.0, keep_fc=keep_fc)
    assert [(m.in_features, m.out_features) for m in model.classifier.modules() if isinstance(m, nn.Linear)] == linears
    assert head_path(model, "vgg16") == f"classifier.{3 * keep_fc if keep_fc < 2 else 6}"
    out = model(torch.empty(2, 3, 224, 224, device="meta"))
    assert out.shape == (2, NUM_CLASSES)
    resnet = _meta_model("resnet50")  # nothing before its head to drop
    apply_head(resnet, "resnet50", NUM_CLASSES, [64], 0.0, keep_fc=keep_fc)
    assert [(m.in_features, m.out_features) for m in resnet.fc if isinstance(m, nn.Linear)] == [
        (2048, 64), (64, NUM_CLASSES)]
    squeezenet = _meta_model("squeezenet1_1")  # a convolutional head and no FC layer: left as it is
    before = [n for n, _ in squeezenet.named_parameters()]
    apply_head(squeezenet, "squeezenet1_1", NUM_CLASSES, [], 0.0, keep_fc=keep_fc)
    assert [n for n, _ in squeezenet.named_parameters()] == before


def test_trainable_conv_blocks_counts_only_blocks_with_a_convolution():
    model = _meta_model("vgg16")
    apply_head(model, "vgg16", NUM_CLASSES, [64], 0.0, keep_fc=1)
    cfg = compose_cfg("model=vgg16", "model.trainable_conv_blocks=0")
    configure_model(model, cfg.model, num_classes=NUM_CLASSES)
    # No conv stage trains; fc6 (after the last one) and the head do.
    assert {n.rsplit(".", 1)[0] for n in _trainable_roots(model)} == {"classifier.0", "classifier.3.0", "classifier.3.2"}
    cfg = compose_cfg("model=vgg16", "model.trainable_conv_blocks=1")
    configure_model(model, cfg.model, num_classes=NUM_CLASSES)
    assert {n.rsplit(".", 1)[0] for n in _trainable_roots(model)} == {
        "features.24", "features.26", "features.28", "classifier.0", "classifier.3.0", "classifier.3.2"}
    cfg = compose_cfg("model=vgg16", "model.trainable_conv_blocks=5")
    configure_model(model, cfg.model, num_classes=NUM_CLASSES)
    assert all(p.requires_grad for p in model.parameters())
    for bad, said in [(("model.trainable_conv_blocks=2", "model.trainable_blocks=1"), "set only one"),
                      (("model.trainable_conv_blocks=2", "model.freeze_backbone=true"), "set only one"),
                      (("model.trainable_conv_blocks=-1",), "model.trainable_conv_blocks=-1"),
                      (("model.head_keep_fc=-1",), "model.head_keep_fc=-1"),
                      (("trainer.balance_to=0",), "trainer.balance_to=0"),
                      (("trainer.balance_to=100", "trainer.sampler=balanced"), "both balance the classes")]:
        from bench.config.checks import validate_config

        assert any(said in p for p in validate_config(compose_cfg(*bad))), bad


# --------------------------------------------------------------------------- the other papers
@pytest.mark.fidelity
def test_cheuque_level2_is_their_mobilenet_with_their_parameter_counts():
    cfg = compose_cfg("experiment=cheuque2022_two_level", "data.root=/d")
    assert (cfg.model.name, cfg.data.image_size, cfg.model.freeze_backbone) == ("mobilenet_v1_050", 128, True)
    assert list(cfg.model.head_hidden) == [512]
    assert cfg.optim._target_ == "torch.optim.Adam" and cfg.optim.lr == 1e-3
    assert list(cfg.optim.betas) == [0.9, 0.999] and cfg.optim.eps == 1e-7
    model = configure_model(create_model("mobilenet_v1_050", num_classes=2), cfg.model, num_classes=2)
    # Their Table 2 counts as Keras does: batch norm's moving mean and variance are parameters there.
    bn_stats = sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
    assert sum(p.numel() for p in model.parameters()) + bn_stats == 1_093_218
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 263_682
    assert any("Faster R-CNN" in d for d in protocol_deviations(cfg))  # level 1 is not their detector


def _conv_params(channels: list) -> list[int]:
    """Parameters of each 3x3 convolution (weights + bias) of a VGG stage list, by hand."""
    out, cin = [], 3
    for c in channels:
        if c != "M":
            out.append(9 * cin * c + c)
            cin = c
    return out


# VGG16's conv stages (Simonyan & Zisserman 2015, configuration D); "M" ends a stage.
VGG16_STAGES = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]


def _meta_configured(cfg, name: str):
    with torch.device("meta"):
        return configure_model(create_model(name, num_classes=8, pretrained=False), cfg.model, num_classes=8)


@pytest.mark.fidelity
def test_acevedo_finetune_vgg16_is_their_head_and_last_four_conv_blocks():
    cfg = compose_cfg("experiment=acevedo2019_finetune", "data.root=/d", "model=vgg16")
    assert (cfg.optim.lr, cfg.trainer.epochs, cfg.trainer.balance_to) == (1e-4, 100, 4096)
    assert cfg.model.weights_tag == "IMAGENET1K_V1" and cfg.trainer.select_by == "val_acc"
    model = _meta_configured(cfg, "vgg16")
    linears = [(m.in_features, m.out_features) for m in model.classifier.modules() if isinstance(m, torch.nn.Linear)]
    assert linears == [(25088, 4096), (4096, 1024), (1024, 8)]  # their Fig. 8: fc6, then 1024, then 8 classes
    # Trainable: conv stages 2-5 (stage 1 frozen), fc6 and the new head; counted by hand.
    convs = [sum(_conv_params(sum(VGG16_STAGES[:i + 1], []))[sum(map(len, VGG16_STAGES[:i])):])
             for i in range(5)]
    assert convs[0] == 1792 + 36928
    expected = sum(convs[1:]) + (25088 * 4096 + 4096) + (4096 * 1024 + 1024) + (1024 * 8 + 8)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected == 121_644_040
    assert not any(p.requires_grad for p in model.features[:4].parameters())  # stage 1: conv 0 and 2


@pytest.mark.fidelity
def test_acevedo_finetune_inception_v3_is_their_head_and_last_four_mixed_blocks():
    cfg = compose_cfg("experiment=acevedo2019_finetune", "data.root=/d", "model=inception_v3")
    model = _meta_configured(cfg, "inception_v3")
    assert [(m.in_features, m.out_features) for m in model.fc.modules() if isinstance(m, torch.nn.Linear)] == [
        (2048, 1024), (1024, 8)]
    assert model.AuxLogits is None
    # Keras mixed7 ... mixed10 are torchvision's Mixed_6e, Mixed_7a, 7b, 7c (counted on torchvision's own net).
    with torch.device("meta"):
        tv = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    last_four = ("Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")
    expected = sum(p.numel() for n in last_four for p in getattr(tv, n).parameters())
    expected += (2048 * 1024 + 1024) + (1024 * 8 + 8)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {*last_four, "fc"}
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


@pytest.mark.fidelity
def test_the_frozen_vgg_head_reads_the_flattened_conv_map():
    cfg = compose_cfg("experiment=scratch_vs_pretrained", "variant=frozen", "data.root=/d", "model=vgg16")
    model = _meta_configured(cfg, "vgg16")
    # Paper: Dense 256 ReLU, Dropout 0.5, Dense N on the flattened 7 x 7 x 512 map; only those train.
    assert [(m.in_features, m.out_features) for m in model.classifier.modules() if isinstance(m, torch.nn.Linear)] == [
        (7 * 7 * 512, 256), (256, 8)]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 25088 * 256 + 256 + 256 * 8 + 8
    scratch = _meta_configured(compose_cfg("experiment=scratch_vs_pretrained", "variant=scratch", "data.root=/d",
                                           "model=vgg16"), "vgg16")
    assert [m.out_features for m in scratch.classifier.modules() if isinstance(m, torch.nn.Linear)] == [4096, 4096, 8]
