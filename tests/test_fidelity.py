"""Each published protocol as its paper ran it (issue 14): the recipe's values, checked against
the paper's own numbers (quoted here) and against torchvision / statsmodels, not the code."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image

from bench.models import create_model
from bench.models import weights as weights_mod
from bench.config.recipe import protocol_deviations

from .conftest import compose_cfg

# Gavas & Olpadkar 2021, Table 2: per-class test counts n (every class-wise accuracy is k/n), and
# the PBC class sizes (Acevedo et al. 2020).
PBC_SIZES = {"basophil": 1218, "eosinophil": 3117, "erythroblast": 1551, "ig": 2895, "lymphocyte": 1214,
             "monocyte": 1420, "neutrophil": 3329, "platelet": 2348}
PAPER_TEST_N = {"basophil": 147, "eosinophil": 375, "erythroblast": 187, "ig": 348, "lymphocyte": 146,
                "monocyte": 171, "neutrophil": 400, "platelet": 282}


# --------------------------------------------------------------------------- Gavas & Olpadkar 2021
def test_the_gavas2021_experiment_is_the_papers_recipe():
    cfg = compose_cfg("experiment=gavas2021", "data.root=/data", "model=resnet50")
    assert cfg.model.pretrained and cfg.model.weights_tag == "IMAGENET1K_V1"
    assert cfg.trainer.amp is False  # fp32
    assert cfg.optim._target_ == "torch.optim.SGD" and cfg.optim.lr == 1e-3 and cfg.optim.momentum == 0.9
    assert cfg.sched.step_size == 7 and cfg.sched.gamma == 0.1 and cfg.trainer.epochs == 25
    assert cfg.trainer.batch_size == 32 and list(cfg.data.split_fractions) == [0.64, 0.24, 0.12]
    assert cfg.data.split_rounding == "ceil" and cfg.data.geometry == "resize_crop" and cfg.data.crop_fraction == 0.875
    assert cfg.data.augment.hflip and cfg.data.augment.vflip and cfg.data.augment.rotation == 60


def test_split_reproduces_the_papers_per_class_test_counts():
    from bench.data.split import make_manifest

    rows = [(f"{c}/{i}.jpg", f"{c}-{i}", c) for c, n in PBC_SIZES.items() for i in range(n)]
    table = pd.DataFrame(rows, columns=["path", "sha1", "label"])
    # Duplicate pairs (identical bytes, one unit of the split), as the real PBC has a few: three
    # basophil pairs, two ig pairs, one neutrophil triple.
    for c, i, j in [("basophil", 1, 0), ("basophil", 3, 2), ("basophil", 5, 4), ("ig", 1, 0), ("ig", 3, 2),
                    ("neutrophil", 1, 0), ("neutrophil", 2, 0)]:
        table.loc[table.path == f"{c}/{i}.jpg", "sha1"] = f"{c}-{j}"
    # One eosinophil identical to a neutrophil (the real PBC has such a pair): both stay in train,
    # and still count in their class's shares (375 = ceil(0.12 x 3,117), not of 3,116).
    table.loc[table.path == "eosinophil/7.jpg", "sha1"] = "neutrophil-9"
    manifest = make_manifest(table, seed=42, fractions=[0.64, 0.24, 0.12], rounding="ceil")
    test = manifest[manifest.split == "test"].groupby("label").size().to_dict()
    # Counted in files, identical files kept together: exactly the paper's counts (issue 24; counting
    # groups gave basophil 146 and ig 349 on the real PBC).
    assert test == PAPER_TEST_N and sum(test.values()) == 2056
    assert manifest.attrs["shortfalls"] == []
    m = manifest.set_index("path")
    for c, i, j in [("basophil", 1, 0), ("basophil", 3, 2), ("ig", 3, 2), ("neutrophil", 2, 0)]:
        assert m.loc[f"{c}/{i}.jpg", "split"] == m.loc[f"{c}/{j}.jpg", "split"]
    # Each count is ceil(0.12 x class size), not the rounded value the default rule gives.
    assert all(PAPER_TEST_N[c] == math.ceil(0.12 * n) for c, n in PBC_SIZES.items())
    rounded = make_manifest(table, seed=42, fractions=[0.64, 0.24, 0.12])
    assert rounded[rounded.split == "test"].groupby("label").size()["eosinophil"] == 374


def test_the_file_count_fill_places_a_duplicate_pair_and_says_when_it_cannot():
    from bench.data.split import make_manifest

    # 11 files: five identical pairs and one single file. ceil rule: test ceil(0.12 x 11) = 2,
    # validation ceil(9 x 0.24 / 0.88) = ceil(2.45) = 3 (a pair and the single file), train 6.
    rows = [(f"a/{i}.jpg", f"a-{i // 2}", "a") for i in range(11)]
    # 12 files in three groups of 4: test's 2 and validation's 3 (ceil(10 x 0.2727) = 3) cannot be
    # made of them; the smallest group (4) goes to each and the shortfall is said.
    rows += [(f"b/{i}.jpg", f"b-{i // 4}", "b") for i in range(12)]
    table = pd.DataFrame(rows, columns=["path", "sha1", "label"])
    for seed in range(5):  # whatever order the shuffle gives
        manifest = make_manifest(table, seed=seed, fractions=[0.64, 0.24, 0.12], rounding="ceil")
        counts = manifest.groupby(["label", "split"]).size().to_dict()
        assert (counts[("a", "test")], counts[("a", "val")], counts[("a", "train")]) == (2, 3, 6)
        assert manifest.groupby("sha1")["split"].nunique().max() == 1  # identical files share a split
        assert (counts[("b", "test")], counts[("b", "val")], counts[("b", "train")]) == (4, 4, 4)
        assert manifest.attrs["shortfalls"] == [
            "class 'b': 4 test images where 2 were due (identical files are kept together in one split)",
            "class 'b': 4 val images where 3 were due (identical files are kept together in one split)"]


@pytest.mark.parametrize("size, shape", [(224, (360, 363)), (64, (300, 200)), (299, (363, 360))])
def test_resize_then_centre_crop_is_torchvisions(tmp_path, size, shape):
    from torchvision.transforms import v2

    from bench.data.imagefolder import decode_resized

    rng = np.random.default_rng(size)
    path = tmp_path / "cell.png"
    Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(path)
    ours = decode_resized(path, size, "resize_crop", 0.875)
    resize = {224: 256, 64: 73, 299: 342}[size]  # round(size / 0.875)
    expected = v2.Compose([v2.Resize(resize), v2.CenterCrop(size)])(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(ours, np.asarray(expected))
    whole = decode_resized(path, size)  # the default geometry: the whole image, stretched
    np.testing.assert_array_equal(whole, np.asarray(Image.open(path).convert("RGB").resize((size, size),
                                                                                          Image.BILINEAR)))


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


def test_an_unknown_weights_tag_is_a_preflight_problem(tmp_path):
    from bench.preflight import plan_runs, preflight

    report = preflight(plan_runs(["model=resnet50", "model.weights_tag=IMAGENET1K_V9", "data=imagefolder",
                                  f"data.root={tmp_path}", f"paths.results_dir={tmp_path}"]))
    assert any("model.weights_tag='IMAGENET1K_V9' is not one of resnet50's" in p for p in report.problems)


def test_holm_adjusted_p_values_by_hand():
    from bench.metrics.statistics import holm

    # Sorted 0.01, 0.03, 0.04 times 3, 2, 1 = 0.03, 0.06, 0.04; running maximum 0.03, 0.06, 0.06.
    got = holm([0.04, 0.01, np.nan, 0.03])
    np.testing.assert_allclose(got[[0, 1, 3]], [0.06, 0.03, 0.06])
    assert np.isnan(got[2])
    # 0.5 x 2 = 1.0; 0.9 x 1 = 0.9, but the running maximum keeps 1.0 (a larger raw p never
    # gets a smaller adjusted one).
    assert holm([0.5, 0.9]).tolist() == [1.0, 1.0]


def test_the_papers_own_ensemble_is_a_fixed_hard_vote(tmp_path):
    from bench.ensemble import folders as ens_runs
    from bench import runs

    from .test_ensemble import CLASSES, _random_stack, _write_run

    rng = np.random.default_rng(4)
    exp = tmp_path / "gavas"
    y_val, y_test = rng.integers(0, 3, 30), rng.integers(0, 3, 20)
    for i, model in enumerate(["wide_resnet50_2", "vgg19", "wide_resnet101_2", "resnet34", "densenet161"]):
        pv = _random_stack(np.random.default_rng(i), 1, 30, 3)[0][0]
        pt = _random_stack(np.random.default_rng(50 + i), 1, 20, 3)[0][0]
        bonus = 3.0 if model == "densenet161" else 0.2  # the best on validation is not one of the paper's four
        pv[np.arange(30), y_val] += bonus
        pt[np.arange(20), y_test] += bonus
        _write_run(exp, model, 0, y_val, pv / pv.sum(1, keepdims=True), y_test, pt / pt.sum(1, keepdims=True))
    result = ens_runs.run_ensemble(exp, method="paper")
    assert result.name == "paper-members"
    # Its members were chosen on the paper's test set: labelled so wherever its numbers appear (issue 24),
    # and a report whose only ensemble it is compares with it under that label, never "test never selects".
    assert result.leaderboard_row["selected_on"] == "test"
    from bench.report import load_results
    from bench.report.markdown import _statistics_md
    from bench.report.tables import statistics_table

    only = load_results(exp)
    assert only.ensemble.label == "ensemble paper-members (selected on test)"
    text = "\n".join(_statistics_md(only, statistics_table(only), 0.05, 0.95, 100, 0))
    assert "p vs ensemble (selected on test)" in text and "ensemble paper-members (selected on test) |" in text
    assert "test never selects, except in ensemble paper-members (selected on test)" in text
    assert sorted(m["model"] for m in result.metrics["members"]) == sorted(ens_runs.PAPER_MEMBERS)
    assert result.metrics["voting"] == "hard" and result.metrics["selection"]["fixed_members"]
    # The four models, as printed in the published Table 3 (our reference copy).
    table3 = pd.read_csv(Path(__file__).resolve().parents[1] / "bench" / "reference" / "gavas2021_table3.csv")
    row = table3[table3["method"].str.startswith("ensemble")]["method"].item()
    assert row == "ensemble: majority vote of " + ", ".join(ens_runs.PAPER_MEMBERS)
    # The report's headline ensemble stays one chosen on validation.
    majority = ens_runs.run_ensemble(exp, method="majority", k=3)
    assert majority.leaderboard_row["selected_on"] == "validation"
    res = load_results(exp)
    assert res.ensemble.model == "majority-k3"
    with pytest.raises(ens_runs.EnsembleError, match="resnet34/seed1"):
        ens_runs.run_ensemble(exp, method="paper", seed=1)
    assert runs.read_json(exp / "ensembles" / "paper-members" / "metrics.json")["k"] == 4


# --------------------------------------------------------------------------- the other papers
def test_cheuque_level2_is_their_mobilenet_with_their_parameter_counts():
    from bench.models.heads import configure_model

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


def test_almotairi_uses_the_five_white_cell_classes():
    cfg = compose_cfg("experiment=almotairi2019", "data.root=/d")
    assert list(cfg.data.classes) == ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    declared = list(cfg.recipe.departures)  # the data: their own datasets, not PBC (issue 24)
    assert protocol_deviations(cfg) == declared
    assert protocol_deviations(compose_cfg("experiment=almotairi2019", "data.root=/d", "trainer.epochs=3")) == [
        *declared, "trainer.epochs=3 (paper: 40)"]


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
    from bench.models.heads import configure_model

    with torch.device("meta"):
        return configure_model(create_model(name, num_classes=8, pretrained=False), cfg.model, num_classes=8)


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


def test_another_papers_recipe_is_never_compared_with_gavas_table2(tmp_path):
    from bench.results.rows import _model_row
    from bench.metrics import classification_metrics
    from bench.results.records import RunRecord

    from .test_leaderboard import CLASSES

    m = classification_metrics([0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3, 4, 5, 6, 7], CLASSES)
    record = RunRecord("wbcsnet", 0, "completed", None, {
        "val": m, "test": m, "classes": CLASSES, "protocol_deviations": [], "recipe": "almotairi2019"})
    row = _model_row(record, CLASSES, {"wbcsnet": 0.5})
    assert row["protocol"] == "almotairi2019: paper" and math.isnan(row["paper_test_acc"])
    assert math.isnan(row["paper_diff"])


def test_keras_decay_steps_the_learning_rate_every_iteration(make_cfg):
    from bench import runs
    from bench.training import run_training as train

    # lr 0.01, decay 0.5, 2 optimizer steps per epoch: epochs start at t = 0, 2, 4 steps,
    # so lr = 0.01 / (1 + 0.5 t) = 0.01, 0.005, 0.00333...
    out = train(make_cfg("trainer.epochs=3", "trainer.max_batches=2", "sched=inverse_time", "sched.decay=0.5",
                         "trainer.sched_interval=step", "optim.lr=0.01"))
    history = pd.read_csv(runs.RunDir(Path(out["run_dir"])).history)
    assert history["lr"].tolist() == pytest.approx([0.01, 0.01 / 2, 0.01 / 3])


# --------------------------------------------------------------------------- what a run is compared with
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
