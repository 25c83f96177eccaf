"""The decode-once store (bench.data.store): cache hits and rebuilds, parallel decoding, the
memory-mapped store, cached file hashes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench import runs
from bench.data.store import load_or_decode
from bench.training import run_training as train

from tests.helpers import noise_folders


# --------------------------------------------------------------------------- store
def test_store_cache_hits_and_rebuilds_on_change(tmp_path):
    root = noise_folders(tmp_path / "data", {"a": 3, "b": 3})
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
    root = noise_folders(tmp_path / "data", {"a": 40, "b": 40})
    files = sorted(root.rglob("*.png"))
    serial, _ = load_or_decode(files, 10, None, workers=1)
    parallel, _ = load_or_decode(files, 10, None, workers=2)
    np.testing.assert_array_equal(serial, parallel)


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
