"""bench-benchmark on a tiny ImageFolder: the table's columns, positive speeds, ratios that are
the quotients of their columns, and the reference loop seeing the harness's split files.
No timing assertions: speeds on a shared CI machine mean nothing."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench import benchmark
from bench.cli import benchmark as benchmark_cli
from tests.helpers import compose_cfg

CLASSES = ("basophil", "eosinophil", "lymphocyte")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """3 classes x 8 small JPEGs of distinct noise (distinct bytes, so no duplicate groups)."""
    root = tmp_path_factory.mktemp("tiny-pbc")
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i in range(8):
            arr = rng.integers(0, 255, (40, 44, 3), dtype=np.uint8)
            arr[..., c] = 255 - arr[..., c] // 4  # a colour cast per class
            Image.fromarray(arr).save(root / name / f"{name}_{i:02d}.jpg", quality=90)
    (root / "lymphocyte" / "notes.txt").write_text("not an image")  # ignored by both paths
    return root


def test_benchmark_writes_the_table(tiny_folder, tmp_path, capsys):
    out = tmp_path / "bench"
    rc = benchmark_cli.main([
        "--data", str(tiny_folder), "--models", "simple_cnn", "--image-size", "32", "--epochs", "1",
        "--batch-size", "8", "--eval-batch-size", "16", "--name", "tiny", "--out", str(out), "--no-sweep",
        "--device", "cpu", "--ref-workers", "0", "--ceiling-modes", "fp32,bf16_cl", "--ceiling-window", "0.05",
    ])
    assert rc == 0
    table = pd.read_csv(out / "tiny.csv")
    assert list(table.columns) == benchmark.COLUMNS + benchmark.SWEEP_COLUMNS
    assert table["model"].tolist() == ["simple_cnn"]
    row = table.iloc[0]
    for col in ["ceil_train_fp32", "ceil_train_bf16_cl", "ceil_train_img_s", "ceil_eval_img_s", "decode_img_s",
                "data_prep_s", "loader_img_s", "loader_noaug_img_s", "harness_train_img_s",
                "harness_train_img_s_all", "harness_eval_img_s", "harness_wall_s", "ref_train_img_s",
                "ref_wall_s", "est_protocol_s"]:
        assert row[col] > 0, col
    assert row["ceil_train_img_s"] == max(row["ceil_train_fp32"], row["ceil_train_bf16_cl"])
    assert row["ceil_train_mode"] in ("fp32", "bf16_cl")
    assert math.isnan(row["ceil_train_fp32_cl"])  # not asked for
    for col in ["harness_val_acc", "ref_val_acc", "harness_val_acc_best", "ref_val_acc_best"]:
        assert 0.0 <= row[col] <= 1.0, col
    assert row["harness_vs_ceiling"] == pytest.approx(row["harness_train_img_s"] / row["ceil_train_img_s"])
    assert row["harness_eval_vs_ceiling"] == pytest.approx(row["harness_eval_img_s"] / row["ceil_eval_img_s"])
    assert row["harness_vs_ref"] == pytest.approx(row["harness_train_img_s"] / row["ref_train_img_s"])
    assert row["val_acc_diff"] == pytest.approx(row["harness_val_acc"] - row["ref_val_acc"])
    assert row["n_train"] + row["n_val"] < 24

    env = json.loads((out / "tiny.json").read_text())["environment"]
    assert env["torch"] and env["torch_threads"] >= 1 and "cpu" in env
    printed = capsys.readouterr().out
    assert "simple_cnn" in printed and "tiny.csv" in printed
    assert not (out / "tiny.work").exists()  # work folders are removed unless --keep-work


def test_reference_loop_sees_the_harness_split(tiny_folder, tmp_path, cache_dir):
    from bench.data.build import build_data

    cfg = compose_cfg("data=imagefolder", f"data.root={tiny_folder}", "data.image_size=32",
                      "data.decode_workers=1")
    exp_dir = tmp_path / "exp"
    bundle = build_data(cfg.data, image_size=32, exp_dir=exp_dir, cache_dir=str(cache_dir))
    ds = benchmark.reference_datasets(tiny_folder, exp_dir / "manifest.csv", 32, cfg.data.mean, cfg.data.std)
    for split in ("train", "val"):
        assert ds[split].classes == bundle.class_names
        harness = bundle.splits[split]
        ref = benchmark.relative_samples(ds[split], tiny_folder)
        assert sorted(ref) == sorted(harness.paths)
        # Same label for every file.
        ref_labels = {p: y for p, (_, y) in zip(ref, ds[split].samples)}
        assert all(ref_labels[p] == int(y) for p, y in zip(harness.paths, harness.labels))
    x, _ = ds["train"][0]
    assert tuple(x.shape) == (3, 32, 32)
    test_files = set(benchmark.relative_samples(ds["train"], tiny_folder)) & set(bundle.splits["test"].paths)
    assert not test_files


def test_ratio_and_steady():
    assert benchmark.ratio(3.0, 2.0) == 1.5
    assert math.isnan(benchmark.ratio(1.0, 0.0))
    assert math.isnan(benchmark.ratio(float("nan"), 1.0))
    assert benchmark.steady([50.0, 40.0, 30.0]) == 40.0  # the first (warm-up) epoch is left out
    assert benchmark.steady([7.0]) == 7.0


def test_model_list_and_sizes():
    names = benchmark.model_list("gavas2021")
    assert len(names) == 27 and "inception_v3" in names and "squeezenet1_1" in names
    assert benchmark.model_list(" resnet18, simple_cnn ") == ["resnet18", "simple_cnn"]
    with pytest.raises(ValueError):
        benchmark.model_list("resnet18,not_a_model")
    assert benchmark_cli.parse_args(["--image-size", "model"]).image_size is None
    assert benchmark_cli.parse_args([]).image_size == 64
    with pytest.raises(SystemExit):
        benchmark_cli.parse_args(["--ceiling-modes", "fp16"])


def test_foreign_load_is_the_busy_time_of_other_processes(monkeypatch):
    # Machine busy time goes 100 s -> 105 s while our process uses 1 s over 2 s of wall time:
    # the others kept (5 - 1) / 2 = 2 CPUs busy.
    from bench.benchmark import common

    busy, ours, clock = iter([100.0, 105.0]), iter([10.0, 11.0]), iter([50.0, 52.0])
    monkeypatch.setattr(common.ForeignLoad, "_busy", staticmethod(lambda: next(busy)))
    monkeypatch.setattr(common.ForeignLoad, "_ours", staticmethod(lambda: next(ours)))
    monkeypatch.setattr(common.ForeignLoad, "_clock", staticmethod(lambda: next(clock)))
    with common.ForeignLoad() as load:
        pass
    assert load.value == pytest.approx(2.0)
    # Without /proc/stat there is no reading: NaN, never a made-up 0.
    monkeypatch.setattr(common.ForeignLoad, "_busy", staticmethod(lambda: None))
    monkeypatch.setattr(common.ForeignLoad, "_ours", staticmethod(lambda: 0.0))
    monkeypatch.setattr(common.ForeignLoad, "_clock", staticmethod(iter([0.0, 1.0]).__next__))
    with common.ForeignLoad() as none:
        pass
    assert math.isnan(none.value)


def test_detection_benchmark_rows_are_the_quotients_of_their_columns(tmp_path, capsys):
    """--task detection: a detector alone vs in the harness, and the chain's fields/s."""
    out = tmp_path / "bench"
    rc = benchmark_cli.main(["--task", "detection", "--field-size", "96", "--epochs", "2", "--batch-size", "2",
                         "--fields", "4", "--ceiling-window", "0.05", "--name", "det", "--out", str(out)])
    assert rc == 0
    frame = pd.read_csv(out / "det.csv")
    assert frame["measure"].tolist() == ["detector train img/s", "chain fields/s", "detector eval img/s"]
    both = frame.dropna(subset=["harness"])
    assert (both["harness"] > 0).all() and (both["alone"] > 0).all()
    np.testing.assert_allclose(both["ratio"], both["harness"] / both["alone"], rtol=1e-6)
    assert frame["model"].unique().tolist() == ["fasterrcnn_mobilenet_v3_large_320_fpn"]
    assert "chain fields/s" in capsys.readouterr().out
    assert not (out / "det.work").exists()
