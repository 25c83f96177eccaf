"""bench.data.bloodmnist on tiny fake .npz files (no network), and a run on its official splits."""

from __future__ import annotations


import numpy as np
import pytest

from bench import runs
from bench.data import bloodmnist as bm
from bench.training import run_training as train

from tests.helpers import compose_cfg


def _fake_arrays(size=28, n=5, seed=0, gray=False):
    rng = np.random.default_rng(seed)
    shape = (n, size, size) if gray else (n, size, size, 3)
    arrays = {}
    for split in bm.SPLITS:
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 8, (n, 1), dtype=np.uint8)
    return arrays


def _write(path, arrays):
    np.savez_compressed(path, **arrays)
    return path


def test_file_names_and_urls(tmp_path):
    assert bm.bloodmnist_file(tmp_path, 28) == tmp_path / "bloodmnist.npz"
    assert bm.bloodmnist_file(tmp_path, 224) == tmp_path / "bloodmnist_224.npz"
    assert bm.bloodmnist_url(64) == "https://zenodo.org/records/10519652/files/bloodmnist_64.npz?download=1"
    assert len(bm.BLOODMNIST_CLASSES) == 8 and bm.BLOODMNIST_CLASSES[3] == "ig"


@pytest.mark.parametrize("size", [32, 0, "big", None, True])
def test_bad_size_lists_valid_sizes(tmp_path, size):
    with pytest.raises(ValueError, match="28, 64, 128, 224"):
        bm.bloodmnist_file(tmp_path, size)


def test_load_fake_file(tmp_path):
    arrays = _fake_arrays()
    _write(tmp_path / "bloodmnist.npz", arrays)
    data = bm.load_bloodmnist(tmp_path, 28)
    assert set(data) == {"train", "val", "test"}
    for split, (images, labels) in data.items():
        assert images.shape == (5, 28, 28, 3) and images.dtype == np.uint8
        assert labels.shape == (5,) and labels.dtype == np.int64
        np.testing.assert_array_equal(images, arrays[f"{split}_images"])
        np.testing.assert_array_equal(labels, arrays[f"{split}_labels"][:, 0])


def test_grayscale_expanded_to_rgb(tmp_path):
    arrays = _fake_arrays(size=64, gray=True)
    _write(tmp_path / "bloodmnist_64.npz", arrays)
    images, _ = bm.load_bloodmnist(tmp_path, 64)["val"]
    assert images.shape == (5, 64, 64, 3)
    for c in range(3):
        np.testing.assert_array_equal(images[..., c], arrays["val_images"])


def test_missing_file_names_path_url_and_options(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        bm.load_bloodmnist(tmp_path, 128)
    msg = str(info.value)
    assert str(tmp_path / "bloodmnist_128.npz") in msg
    assert bm.bloodmnist_url(128) in msg
    assert "data.root=" in msg and "data.download=true" in msg


def test_failed_download_is_file_not_found(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(bm.urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError, match="network is unreachable") as info:
        bm.load_bloodmnist(tmp_path, 28, download=True)
    assert bm.bloodmnist_url(28) in str(info.value)
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.pop("test_labels"), "missing arrays test_labels"),
        (lambda a: a.update(train_images=a["train_images"].astype(np.float32)), "must be uint8"),
        (lambda a: a.update(val_labels=np.full((5, 1), 8)), r"0\.\.7"),
        (lambda a: a.update(val_labels=np.zeros((4, 1), dtype=np.int64)), "4 labels for 5 images"),
        (lambda a: a.update(test_images=np.zeros((5, 28, 28, 4), np.uint8)), r"\(N, H, W, 3\)"),
        (lambda a: a.update(test_images=np.zeros((5, 64, 64, 3), np.uint8)), "expected 28x28"),
    ],
)
def test_invalid_arrays_name_the_file(tmp_path, change, message):
    arrays = _fake_arrays()
    change(arrays)
    path = _write(tmp_path / "bloodmnist.npz", arrays)
    with pytest.raises(ValueError, match=message) as info:
        bm.load_bloodmnist(tmp_path, 28)
    assert str(path) in str(info.value)


def test_not_an_npz(tmp_path):
    (tmp_path / "bloodmnist.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bloodmnist.npz"):
        bm.load_bloodmnist(tmp_path, 28)


def test_bloodmnist_trains_on_its_official_splits(tmp_path, cache_dir):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 40), ("val", 16), ("test", 16)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 8).reshape(-1, 1)
    np.savez(tmp_path / "bloodmnist.npz", **arrays)
    results = tmp_path / "results"
    cfg = compose_cfg("trainer=cpu_smoke", "model=simple_cnn", "model.pretrained=false", "data=bloodmnist",
                      f"data.root={tmp_path}", "data.bloodmnist_size=28", "data.image_size=32", "trainer.epochs=1",
                      f"paths.results_dir={results}", f"paths.cache_dir={cache_dir}")
    assert train(cfg)["status"] == "completed"
    metrics = runs.read_json(results / "bloodmnist28" / "runs" / "simple_cnn" / "seed0" / "metrics.json")
    assert metrics["test"]["n"] == 16 and metrics["val"]["n"] == 16 and metrics["input_size"] == 32
    assert metrics["classes"][3] == "ig"
