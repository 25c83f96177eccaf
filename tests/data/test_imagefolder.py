"""Class folders (bench.data.imagefolder): decoding any image mode to RGB as torchvision resizes
(and resizes then centre-crops), scanning, and runs on folders with corrupt, duplicate and
undecodable files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench import runs
from bench.data.build import build_data
from bench.data.imagefolder import DataError, decode_resized, scan_imagefolder
from bench.training import run_training as train

from tests.helpers import colour_folders, compose_cfg, noise_folders


# --------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "CMYK", "P", "LA", "I;16"])
def test_any_image_mode_decodes_to_rgb(tmp_path, mode):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    img = rgb.convert(mode) if mode != "I;16" else Image.fromarray(
        (np.arange(600).reshape(20, 30) * 100).astype(np.uint16))
    path = tmp_path / ("x.tiff" if mode in ("CMYK", "I;16") else "x.png")
    img.save(path)
    out = decode_resized(path, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8


def test_transparent_pixels_become_white_not_black(tmp_path):
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "t.png")
    assert (decode_resized(tmp_path / "t.png", 8) == 255).all()


def test_decode_matches_torchvision_resize(tmp_path):
    from torchvision.transforms import Resize

    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (90, 70, 3), dtype=np.uint8))
    img.save(tmp_path / "a.png")
    expected = np.asarray(Resize((32, 32))(img))
    np.testing.assert_array_equal(decode_resized(tmp_path / "a.png", 32), expected)


def test_scan_needs_two_classes(tmp_path):
    noise_folders(tmp_path, {"only": 3})
    with pytest.raises(DataError, match="at least 2"):
        scan_imagefolder(tmp_path)


def test_missing_root_names_the_option(tmp_path):
    with pytest.raises(DataError, match="data.root"):
        scan_imagefolder(tmp_path / "nope")


# --------------------------------------------------------------------------- an imagefolder run
def test_corrupt_and_duplicate_files_in_a_real_run(tmp_path, cache_dir):
    root = noise_folders(tmp_path / "data", {"a": 12, "b": 12, "c": 12})
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "b" / "notes.png").write_text("this is text")
    full = (root / "c" / "c_000.png").read_bytes()
    (root / "c" / "truncated.png").write_bytes(full[: len(full) // 2])
    shutil.copy(root / "a" / "a_000.png", root / "b" / "copy_of_a.png")  # same bytes, other label
    results = tmp_path / "results"
    cfg = compose_cfg(
        "trainer=cpu_smoke", "model=simple_cnn", "model.pretrained=false", "data=imagefolder",
        f"data.root={root}", "data.image_size=16", "trainer.epochs=1", "data.decode_workers=1",
        f"paths.results_dir={results}", f"paths.cache_dir={cache_dir}",
    )
    out = train(cfg)
    assert out["status"] == "completed"
    # No experiment named: the folder is named after the data (its name and a hash of its path).
    assert cfg.experiment_name.startswith("data-") and len(cfg.experiment_name) == len("data-") + 6
    rd = runs.RunDir.for_run(results / cfg.experiment_name, "simple_cnn", 0)
    excluded = pd.read_csv(rd.excluded).set_index("path")
    for bad in ("a/broken.jpg", "b/notes.png", "c/truncated.png"):
        assert bad in excluded.index and excluded.loc[bad, "reason"]
    assert "b/copy_of_a.png" in excluded.index  # reported
    manifest = pd.read_csv(results / cfg.experiment_name / "manifest.csv").set_index("path")
    assert "a/broken.jpg" not in manifest.index
    assert manifest.loc["b/copy_of_a.png", "split"] == manifest.loc["a/a_000.png", "split"] == "train"
    metrics = runs.read_json(rd.metrics)
    # 3 undecodable files are left out; the two copies under two labels are listed but train.
    assert metrics["n_excluded"] == 3 and metrics["n_train_only_duplicates"] == 2 == len(excluded) - 3


def test_the_data_line_tells_excluded_files_from_train_only_duplicates(tmp_path, cache_dir):
    root = noise_folders(tmp_path / "data", {"a": 8, "b": 8})
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")  # left out
    shutil.copy(root / "a" / "a_000.png", root / "b" / "copy_of_a.png")  # the pair stays in train
    cfg = compose_cfg("data=imagefolder", f"data.root={root}", "data.decode_workers=1", f"paths.cache_dir={cache_dir}")
    bundle = build_data(cfg.data, image_size=8, exp_dir=tmp_path / "exp", cache_dir=str(cache_dir))
    # 17 readable files, all in a split: the broken one is excluded, the copy and its original train only.
    assert sum(len(s) for s in bundle.splits.values()) == 17
    assert "excluded 1, train-only duplicates 2" in bundle.summary(), bundle.summary()


@pytest.mark.own_data
def test_a_class_whose_files_all_fail_to_decode_is_left_out_and_named(tmp_path, cache_dir):
    root = tmp_path / "lab"
    colour_folders(root, {"a": 12, "b": 12})
    (root / "ghost").mkdir()
    for i in range(3):
        (root / "ghost" / f"g{i}.jpg").write_bytes(b"not a jpeg at all")
    (root / "empty").mkdir()
    cfg = compose_cfg("trainer=cpu_smoke", "model=simple_cnn", "model.pretrained=false", "data=imagefolder",
                      f"data.root={root}", "data.image_size=16", "trainer.epochs=1", "data.decode_workers=1",
                      f"paths.results_dir={tmp_path / 'results'}", f"paths.cache_dir={cache_dir}")
    out = train(cfg)
    assert out["status"] == "completed"
    metrics = runs.read_json(Path(out["run_dir"]) / "metrics.json")
    assert metrics["classes"] == ["a", "b"]  # no phantom third output
    assert any("class 'ghost': none of its 3 file(s) could be decoded" in w for w in metrics["warnings"])
    assert any("'empty'" in w for w in metrics["warnings"])


@pytest.mark.fidelity
@pytest.mark.parametrize("size, shape", [(224, (360, 363)), (64, (300, 200)), (299, (363, 360))])
def test_resize_then_centre_crop_is_torchvisions(tmp_path, size, shape):
    from torchvision.transforms import v2

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
