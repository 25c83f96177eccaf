"""Data layer: decoding, split and manifest, duplicates and corrupt files, store, augmentation."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bench import runs
from bench.data.build import build_data
from bench.data.imagefolder import DataError, decode_resized, scan_imagefolder
from bench.data.loader import BatchLoader
from bench.data.split import make_manifest
from bench.data.store import load_or_decode
from bench.data.transforms import BatchAugment, Normalize, apply_augment
from bench.training import run_training as train

from .conftest import compose_cfg


def _write_folder(root, counts: dict[str, int], size=24, seed=0):
    rng = np.random.default_rng(seed)
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"{cls}_{i:03d}.png")
    return root


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
    _write_folder(tmp_path, {"only": 3})
    with pytest.raises(DataError, match="at least 2"):
        scan_imagefolder(tmp_path)


def test_missing_root_names_the_option(tmp_path):
    with pytest.raises(DataError, match="data.root"):
        scan_imagefolder(tmp_path / "nope")


# --------------------------------------------------------------------------- split
def _table(counts):
    rows = [(f"{c}/{i}.png", f"{c}-{i}", c) for c, n in counts.items() for i in range(n)]
    return pd.DataFrame(rows, columns=["path", "sha1", "label"])


def test_split_is_stratified_deterministic_and_seeded():
    table = _table({"a": 100, "b": 50, "c": 25})
    m1 = make_manifest(table, seed=3, fractions=[0.64, 0.24, 0.12])
    m2 = make_manifest(table.sample(frac=1, random_state=0), seed=3, fractions=[0.64, 0.24, 0.12])
    pd.testing.assert_frame_equal(m1, m2)
    counts = m1.groupby(["label", "split"]).size().unstack()
    assert counts.loc["a"].to_dict() == {"test": 12, "train": 64, "val": 24}
    assert counts.loc["b"].to_dict() == {"test": 6, "train": 32, "val": 12}
    m3 = make_manifest(table, seed=4, fractions=[0.64, 0.24, 0.12])
    assert not m1["split"].equals(m3["split"])


def test_class_too_small_is_named():
    with pytest.raises(DataError, match=r"'tiny' \(2 distinct"):
        make_manifest(_table({"big": 30, "tiny": 2}), seed=0, fractions=[0.64, 0.24, 0.12])


def test_identical_bytes_share_a_split_and_conflicts_stay_in_train():
    table = _table({"a": 40, "b": 40})
    table.loc[table.path == "a/1.png", "sha1"] = "same"  # duplicates within a class
    table.loc[table.path == "a/2.png", "sha1"] = "same"
    table.loc[table.path == "a/3.png", "sha1"] = "clash"  # identical bytes, two labels
    table.loc[table.path == "b/3.png", "sha1"] = "clash"
    for seed in range(10):
        m = make_manifest(table, seed=seed, fractions=[0.64, 0.24, 0.12]).set_index("path")
        assert m.loc["a/1.png", "split"] == m.loc["a/2.png", "split"]
        assert m.loc["a/3.png", "split"] == m.loc["b/3.png", "split"] == "train"


# --------------------------------------------------------------------------- an imagefolder run
def test_corrupt_and_duplicate_files_in_a_real_run(tmp_path, cache_dir):
    root = _write_folder(tmp_path / "data", {"a": 12, "b": 12, "c": 12})
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
    root = _write_folder(tmp_path / "data", {"a": 8, "b": 8})
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")  # left out
    shutil.copy(root / "a" / "a_000.png", root / "b" / "copy_of_a.png")  # the pair stays in train
    cfg = compose_cfg("data=imagefolder", f"data.root={root}", "data.decode_workers=1", f"paths.cache_dir={cache_dir}")
    bundle = build_data(cfg.data, image_size=8, exp_dir=tmp_path / "exp", cache_dir=str(cache_dir))
    # 17 readable files, all in a split: the broken one is excluded, the copy and its original train only.
    assert sum(len(s) for s in bundle.splits.values()) == 17
    assert "excluded 1, train-only duplicates 2" in bundle.summary(), bundle.summary()


def test_changed_data_under_an_existing_manifest_is_an_error(tmp_path, cache_dir):
    root = _write_folder(tmp_path / "data", {"a": 6, "b": 6})
    cfg = compose_cfg("data=imagefolder", f"data.root={root}", "data.decode_workers=1",
                      f"paths.cache_dir={cache_dir}")
    build_data(cfg.data, image_size=8, exp_dir=tmp_path / "exp", cache_dir=str(cache_dir))
    _write_folder(tmp_path / "data", {"a": 7}, seed=5)  # rewrites a_000..a_005, adds a_006
    with pytest.raises(DataError, match="no longer matches"):
        build_data(cfg.data, image_size=8, exp_dir=tmp_path / "exp", cache_dir=str(cache_dir))


# --------------------------------------------------------------------------- store
def test_store_cache_hits_and_rebuilds_on_change(tmp_path):
    root = _write_folder(tmp_path / "data", {"a": 3, "b": 3})
    files = sorted(root.rglob("*.png"))
    a1, _ = load_or_decode(files, 12, tmp_path / "cache", workers=1)
    stores = sorted((tmp_path / "cache" / "stores").glob("*.npy"))
    assert len(stores) == 1
    a2, _ = load_or_decode(files, 12, tmp_path / "cache", workers=1)
    np.testing.assert_array_equal(a1, a2)
    assert len(list((tmp_path / "cache" / "stores").glob("*.npy"))) == 1  # a hit, no new store
    load_or_decode(files, 16, tmp_path / "cache", workers=1)  # another size: a new store
    Image.new("RGB", (24, 24), "red").save(files[0])  # a changed file: a new store
    a3, _ = load_or_decode(files, 12, tmp_path / "cache", workers=1)
    assert len(list((tmp_path / "cache" / "stores").glob("*.npy"))) == 3
    assert (a3[0] != a1[0]).any()


def test_parallel_decode_equals_serial(tmp_path):
    root = _write_folder(tmp_path / "data", {"a": 40, "b": 40})
    files = sorted(root.rglob("*.png"))
    serial, _ = load_or_decode(files, 10, None, workers=1)
    parallel, _ = load_or_decode(files, 10, None, workers=2)
    np.testing.assert_array_equal(serial, parallel)


# --------------------------------------------------------------------------- augmentation
def _batch(n=4, size=16):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 255


def test_flips_are_exact():
    x = _batch()
    zero = torch.zeros(4)
    yes, no = torch.ones(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)
    torch.testing.assert_close(apply_augment(x, hflip=yes, vflip=no, angle=zero), x.flip(-1), atol=1e-3, rtol=0)
    torch.testing.assert_close(apply_augment(x, hflip=no, vflip=yes, angle=zero), x.flip(-2), atol=1e-3, rtol=0)
    torch.testing.assert_close(apply_augment(x, hflip=no, vflip=no, angle=zero), x, atol=1e-3, rtol=0)


def test_rotation_by_90_degrees_is_rot90():
    x = _batch()
    no = torch.zeros(4, dtype=torch.bool)
    out = apply_augment(x, hflip=no, vflip=no, angle=torch.full((4,), math.pi / 2))
    rotated = [x.rot90(k, dims=(-2, -1)) for k in (1, -1)]
    assert min((out - r).abs().max().item() for r in rotated) < 1e-2


@pytest.mark.parametrize("angle_deg", [-60.0, -23.0, 37.0, 60.0])
def test_nearest_rotation_matches_torchvision_random_rotation(angle_deg):
    # The per-image pipeline of the paper: torchvision's rotate (counter-clockwise for a
    # positive angle) with its default nearest sampling and a black fill. The batched path
    # lands on the same pixels; 0.5% slack covers sample points on a pixel boundary.
    from torchvision.transforms.v2 import functional as TF

    x = _batch(size=48)
    ref = torch.stack([TF.rotate(img, angle_deg) for img in x])
    no = torch.zeros(x.shape[0], dtype=torch.bool)
    out = apply_augment(x, hflip=no, vflip=no, angle=torch.full((x.shape[0],), math.radians(angle_deg)))
    mismatch = ((out - ref).abs() > 1e-6).any(1).float().mean().item()
    assert mismatch < 0.005, f"batched rotation differs from torchvision on {mismatch:.1%} of pixels"


def test_unknown_interpolation_is_a_clear_error():
    with pytest.raises(ValueError, match="data.augment.interpolation='bicubic'.*nearest"):
        BatchAugment(interpolation="bicubic")


def test_augmentation_is_seeded_and_covers_flips_and_rotations():
    aug = BatchAugment(rotation=60)
    p1 = aug.sample(2000, torch.Generator().manual_seed(7))
    p2 = aug.sample(2000, torch.Generator().manual_seed(7))
    for k in p1:
        assert torch.equal(p1[k], p2[k])
    assert 0.4 < p1["hflip"].float().mean() < 0.6 and 0.4 < p1["vflip"].float().mean() < 0.6
    deg = torch.rad2deg(p1["angle"])
    assert deg.abs().max() <= 60 and deg.min() < -55 and deg.max() > 55
    off = BatchAugment(hflip=False, vflip=False, rotation=0).sample(100, torch.Generator().manual_seed(0))
    assert not off["hflip"].any() and not off["vflip"].any() and (off["angle"] == 0).all()


def test_eval_batches_are_the_normalised_store():
    from bench.data.store import SplitData

    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    split = SplitData(images, torch.arange(5), [str(i) for i in range(5)])
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    loader = BatchLoader(split, 2, normalize=Normalize(mean, std), device=torch.device("cpu"))
    xs, ys = zip(*loader)
    expected = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(torch.cat(xs), expected, atol=1e-5, rtol=0)
    assert torch.cat(ys).tolist() == [0, 1, 2, 3, 4]


def test_training_batches_depend_only_on_seed_and_epoch():
    from bench.data.store import SplitData

    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    split = SplitData(images, torch.arange(10), [str(i) for i in range(10)])

    def epoch_batches(epoch):
        loader = BatchLoader(split, 4, normalize=Normalize([0.5] * 3, [0.5] * 3), device=torch.device("cpu"),
                             shuffle=True, augment=BatchAugment(), seed=1)
        loader.set_epoch(epoch)
        return [(x.clone(), y.clone()) for x, y in loader]

    a, b, c = epoch_batches(2), epoch_batches(2), epoch_batches(3)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not all(torch.equal(y1, y2) for (_, y1), (_, y2) in zip(a, c))


def test_balance_to_tops_each_smaller_class_up_with_its_own_images_evenly():
    from bench.data.store import SplitData

    # 3 images of class 0, 5 of class 1, 10 of class 2; every image's pixels hold its index.
    labels = torch.tensor([0] * 3 + [1] * 5 + [2] * 10)
    images = torch.arange(18, dtype=torch.uint8).view(18, 1, 1, 1).expand(18, 3, 2, 2).contiguous()
    split = SplitData(images, labels, [str(i) for i in range(18)])
    loader = BatchLoader(split, 4, normalize=Normalize([0.0] * 3, [1.0] * 3), device=torch.device("cpu"),
                         shuffle=True, seed=0, balance_to=8)
    assert len(loader) == 7  # 8 + 8 + 10 = 26 draws per epoch, in batches of 4
    orders = []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        drawn = torch.cat([(x[:, 0, 0, 0] * 255).round().long() for x, _ in loader])
        ys = torch.cat([y for _, y in loader])
        assert torch.equal(labels[drawn], ys)
        counts = torch.bincount(drawn, minlength=18).tolist()
        # 8 draws of 3 images: each 2 or 3 times (8 = 3 + 3 + 2); of 5: each 1 or 2 times (8 = 2+2+2+1+1);
        # the class of 10 (more than 8) is kept whole, each image once.
        assert sorted(counts[:3]) == [2, 3, 3] and sorted(counts[3:8]) == [1, 1, 2, 2, 2]
        assert counts[8:] == [1] * 10
        orders.append(drawn)
    assert not torch.equal(orders[0], orders[1])  # which images get the extra copies changes per epoch
    with pytest.raises(ValueError, match="both balance"):
        BatchLoader(split, 4, normalize=Normalize([0.0] * 3, [1.0] * 3), device=torch.device("cpu"),
                    balance_to=8, sample_weights=torch.ones(18))


def test_mapped_images_index_like_the_in_memory_tensor(tmp_path):
    from bench.data.store import MappedImages, SplitData

    store = np.random.default_rng(0).integers(0, 256, (20, 6, 6, 3), dtype=np.uint8)
    np.save(tmp_path / "s.npy", store)
    mapped_store = np.load(tmp_path / "s.npy", mmap_mode="r")
    rows = [7, 3, 19, 0, 11]
    lazy = MappedImages(mapped_store, rows)
    eager = torch.from_numpy(np.ascontiguousarray(store[rows].transpose(0, 3, 1, 2)))
    assert lazy.shape == tuple(eager.shape) and len(lazy) == 5
    for index in (slice(1, 4), torch.tensor([4, 0, 2]), np.array([3, 3]), [1, 0]):
        assert torch.equal(lazy[index], eager[index])
    assert torch.equal(lazy[2], eager[2])
    assert lazy.to("cuda") is lazy  # stays on the host; the loader moves batches
    split = SplitData(lazy, torch.arange(5), [str(r) for r in rows])
    assert split.to("cuda") is split  # labels stay with the images (pinned copies need host tensors)


def test_training_from_the_memory_mapped_store_matches_training_in_memory(make_cfg, caplog):
    import logging

    in_memory = train(make_cfg("trainer.epochs=2", "data.store=memory"))
    with caplog.at_level(logging.INFO, logger="bench.data.build"):
        mapped = train(make_cfg("trainer.epochs=2", "data.store=mmap", "experiment_name=mapped"))
    assert "read from the memory-mapped store" in caplog.text
    assert in_memory["status"] == mapped["status"] == "completed"
    a = runs.read_json(Path(in_memory["run_dir"]) / "metrics.json")
    b = runs.read_json(Path(mapped["run_dir"]) / "metrics.json")
    assert a["val"] == b["val"] and a["test"] == b["test"]



def test_file_hashes_are_cached_and_follow_changes(tmp_path, monkeypatch):
    import os

    import bench.data.split as split_mod
    from bench.data.split import file_sha1
    from bench.data.store import file_hashes

    files = []
    for i in range(3):
        f = tmp_path / f"f{i}.bin"
        f.write_bytes(bytes([i]) * 10)
        files.append(f)
    first = file_hashes(files, tmp_path / "cache")
    assert first == [file_sha1(f) for f in files]

    def no_reading(path):
        raise AssertionError(f"{path} was read again")

    monkeypatch.setattr(split_mod, "file_sha1", no_reading)
    assert file_hashes(files, tmp_path / "cache") == first  # from the cache
    monkeypatch.undo()
    files[1].write_bytes(b"changed!")
    os.utime(files[1], ns=(1, 1))  # a new mtime (and size): a new key
    again = file_hashes(files, tmp_path / "cache")
    assert again[1] == file_sha1(files[1]) != first[1] and again[0] == first[0]
