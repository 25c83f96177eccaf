"""data=multi_source: several labs' folders in one experiment, class maps per source, the split stratified by
class within each source, leave-one-source-out, and metrics per source. Expected counts are worked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.data.build import build_data
from bench.data.imagefolder import DataError
from tests.helpers import colour_folders, compose_cfg


def two_labs(tmp_path: Path) -> dict[str, Path]:
    """Lab a: folders lymphocyte / neutrophil, 20 images each. Lab b: Lympho / Neutro (20 each) and Other (5),
    another palette (seed) and size."""
    a = colour_folders(tmp_path / "a", {"lymphocyte": 20, "neutrophil": 20}, size=20, seed=1)
    b = colour_folders(tmp_path / "b", {"Lympho": 20, "Neutro": 20, "Other": 5}, size=28, seed=2)
    return {"a": a, "b": b}


def data_cfg(labs, *extra):
    sources = "{" + ", ".join(f"{k}: '{v}'" for k, v in labs.items()) + "}"
    cfg = compose_cfg("data=multi_source", f"data.sources={sources}",
                      "data.source_maps={b: {Lympho: lymphocyte, Neutro: neutrophil}}", "data.decode_workers=1", *extra)
    return cfg.data


def counts(bundle) -> pd.DataFrame:
    rows = [(s, p.split("/")[0], bundle.class_names[int(y)])
            for s, d in bundle.splits.items() for p, y in zip(d.paths, d.labels)]
    return pd.DataFrame(rows, columns=["split", "source", "label"]).value_counts().sort_index()


@pytest.mark.known_answer
def test_each_lab_keeps_its_source_its_classes_are_mapped_and_each_is_split_by_class(tmp_path):
    bundle = build_data(data_cfg(two_labs(tmp_path)), image_size=16, exp_dir=tmp_path / "exp", cache_dir=None)
    assert bundle.class_names == ["lymphocyte", "neutrophil"] and bundle.sources == ["a", "b"]
    assert all(p.split("/")[0] in ("a", "b") for d in bundle.splits.values() for p in d.paths)
    # 20 images per (source, class) at 64/24/12: test round(2.4) = 2, validation round(4.8) = 5, train 13.
    c = counts(bundle)
    for source in ("a", "b"):
        for label in ("lymphocyte", "neutrophil"):
            assert (c["train", source, label], c["val", source, label], c["test", source, label]) == (13, 5, 2)
    other = bundle.excluded[bundle.excluded["path"].str.startswith("b/Other/")]
    assert len(other) == 5 and other["reason"].str.contains("not in data.source_maps.b").all()


@pytest.mark.known_answer
def test_leave_one_source_out_tests_on_every_image_of_that_lab_and_never_trains_on_it(tmp_path):
    labs = two_labs(tmp_path)
    bundle = build_data(data_cfg(labs, "data.split_mode=leave_one_source_out", "data.test_source=b"),
                        image_size=16, exp_dir=tmp_path / "exp", cache_dir=None)
    c = counts(bundle)
    assert {p.split("/")[0] for p in bundle.splits["test"].paths} == {"b"}
    assert len(bundle.splits["test"]) == 40  # every mapped image of b (its 5 'Other' are no class)
    assert not any(p.startswith("b/") for s in ("train", "val") for p in bundle.splits[s].paths)
    # Validation carved from a's 20 per class in the train:val ratio 64:24: round(20 x 24/88) = round(5.45) = 5.
    assert (c["train", "a", "lymphocyte"], c["val", "a", "lymphocyte"]) == (15, 5)
    assert (tmp_path / "exp" / "manifest-loso-b.csv").is_file()


def test_a_copy_of_a_held_out_image_in_a_training_lab_is_left_out(tmp_path):
    labs = two_labs(tmp_path)
    copy = labs["a"] / "lymphocyte" / "copied.png"
    copy.write_bytes((labs["b"] / "Lympho" / "Lympho_003.png").read_bytes())
    bundle = build_data(data_cfg(labs, "data.split_mode=leave_one_source_out", "data.test_source=b"),
                        image_size=16, exp_dir=tmp_path / "exp", cache_dir=None)
    assert "a/lymphocyte/copied.png" not in [p for d in bundle.splits.values() for p in d.paths]
    reason = bundle.excluded.set_index("path").loc["a/lymphocyte/copied.png", "reason"]
    assert "held-out source b" in reason


def test_a_preset_names_a_labs_folder_map(tmp_path):
    a = colour_folders(tmp_path / "a", {"lymphocyte": 6, "neutrophil": 6}, size=16)
    b = colour_folders(tmp_path / "b", {"lymphocyte": 6, "neutrophil": 6, "unknown": 3}, size=16, seed=3)
    cfg = compose_cfg("data=multi_source", f"data.sources={{a: '{a}', b: '{b}'}}",
                      "data.source_maps={b: segmentation_wbc_dataset1}", "data.decode_workers=1")
    bundle = build_data(cfg.data, image_size=16, exp_dir=tmp_path / "exp", cache_dir=None)
    assert bundle.class_names == ["lymphocyte", "neutrophil"]
    assert sorted(bundle.excluded["path"].str.split("/").str[1].unique()) == ["unknown"]
    bad = compose_cfg("data=multi_source", f"data.sources={{a: '{a}', b: '{b}'}}", "data.source_maps={b: raabin}")
    with pytest.raises(DataError, match=r"data.source_maps.b='raabin' is not a preset.*raabin_wbc"):
        build_data(bad.data, image_size=16, exp_dir=tmp_path / "exp2", cache_dir=None)


@pytest.mark.known_answer
def test_metrics_per_source_by_hand():
    from bench.data.sources import source_metrics

    paths = ["a/x1", "a/x2", "a/x3", "a/x4", "b/y1", "b/y2"]
    out = source_metrics(paths, [0, 0, 1, 1, 0, 1], [0, 1, 1, 1, 1, 1], ["l", "n"])
    # a: 3 of 4 right; recalls 1/2 and 2/2 -> balanced 0.75; F1 class l = 2/3 (p 1, r .5), n = 0.8 (p 2/3, r 1).
    assert out["a"]["n"] == 4 and out["a"]["accuracy"] == 0.75 and out["a"]["balanced_accuracy"] == 0.75
    assert out["a"]["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    # b: 1 of 2; recalls 0 and 1 -> 0.5; F1 l = 0, n = 2/3 (p .5, r 1).
    assert out["b"]["accuracy"] == 0.5 and out["b"]["balanced_accuracy"] == 0.5
    assert out["b"]["macro_f1"] == pytest.approx(1 / 3)


def test_a_multi_source_run_records_each_source_and_the_leaderboard_shows_them(tmp_path, make_cfg):
    from bench.training import run_training

    labs = two_labs(tmp_path)
    sources = "{" + ", ".join(f"{k}: '{v}'" for k, v in labs.items()) + "}"
    out = run_training(make_cfg("data=multi_source", f"data.sources={sources}",
                                "data.source_maps={b: {Lympho: lymphocyte, Neutro: neutrophil}}",
                                "data.split_mode=leave_one_source_out", "data.test_source=b",
                                "trainer.epochs=1", "experiment_name=labs"))
    assert out["status"] == "completed", out
    metrics = json.loads((Path(out["run_dir"]) / "metrics.json").read_text())
    assert list(metrics["by_source"]["test"]) == ["b"] and list(metrics["by_source"]["val"]) == ["a"]
    assert metrics["by_source"]["test"]["b"]["balanced_accuracy"] == pytest.approx(metrics["test"]["balanced_accuracy"])
    board = pd.read_csv(Path(out["run_dir"]).parents[2] / "leaderboard.csv")
    assert board["src_b_balanced_acc"].iloc[0] == pytest.approx(metrics["test"]["balanced_accuracy"], abs=1e-4)


def test_multi_source_options_are_checked_before_anything_runs(tmp_path):
    from bench.config.checks import validate_config

    problems = validate_config(compose_cfg("data.split_mode=leave_one_source_out"))
    assert any("data=multi_source" in p for p in problems)
    cfg = compose_cfg("data=multi_source", "data.sources={a: /x, b: /y}", "data.split_mode=leave_one_source_out",
                      "data.test_source=c")
    assert any("data.test_source='c'" in p and "a, b" in p for p in validate_config(cfg))
    with pytest.raises(DataError, match="two or more labs"):
        build_data(compose_cfg("data=multi_source", f"data.sources={{a: '{tmp_path}'}}").data, image_size=16,
                   exp_dir=tmp_path / "exp", cache_dir=None)


def test_a_map_option_given_something_else_is_named():
    from bench.config.checks import validate_config

    problems = validate_config(compose_cfg("data.class_map=granulocyte"))
    assert any(p.startswith("data.class_map='granulocyte' is not valid: a map") for p in problems), problems


def test_the_report_scores_each_source_and_says_the_data_is_several_labs(tmp_path, make_cfg):
    from bench.report import build_report
    from bench.training import run_training

    labs = two_labs(tmp_path)
    sources = "{" + ", ".join(f"{k}: '{v}'" for k, v in labs.items()) + "}"
    out = run_training(make_cfg("data=multi_source", f"data.sources={sources}",
                                "data.source_maps={b: {Lympho: lymphocyte, Neutro: neutrophil}}",
                                "trainer.epochs=1", "experiment_name=labs"))
    assert out["status"] == "completed", out
    metrics = json.loads((Path(out["run_dir"]) / "metrics.json").read_text())
    text = build_report(Path(out["run_dir"]).parents[2]).read_text()
    section = text[text.index("## By source"):]
    for split in ("val", "test"):  # both labs in both splits (a holdout split within each source)
        for source in ("a", "b"):
            scores = metrics["by_source"][split][source]
            assert f"{split} {source} (n={scores['n']}) %" in section
            assert f"{100 * scores['balanced_accuracy']:.2f}" in section
    assert "Data: several labs' images (data=multi_source" in text and "not a replication" in text


def test_the_preflight_counts_each_lab_and_names_the_left_out_folders(tmp_path):
    from bench.preflight import plan_runs, preflight

    labs = two_labs(tmp_path)
    sources = "{" + ", ".join(f"{k}: '{v}'" for k, v in labs.items()) + "}"
    report = preflight(plan_runs(["data=multi_source", f"data.sources={sources}",
                                  "data.source_maps={b: {Lympho: lymphocyte, Neutro: neutrophil}}",
                                  f"paths.results_dir={tmp_path / 'results'}", "model=simple_cnn",
                                  "model.pretrained=false"]))
    text = report.format()
    assert "80 images in 2 classes from a (40), b (40)" in text, text
    assert "5 image(s) in folders no class map names are left out" in text
