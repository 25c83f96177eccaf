"""data.stain: the target is torchstain's fit on training images only, every split is normalised to it
(torchstain's own normalize, image by image), blank images are kept and counted, the result is cached,
and a run's checkpoint carries the target to bench-predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchstain.numpy.normalizers import NumpyMacenkoNormalizer, NumpyReinhardNormalizer

from bench.data.build import build_data
from bench.data.stain import StainNormalizer, fit_target, normalise_images
from tests.helpers import compose_cfg


def stained_folders(root: Path, n: int = 10, size: int = 24, seed: int = 0, tint=(0, 0, 0)) -> Path:
    """Two classes of purple-and-pink 'cells' on a light background (stained pixels for Macenko);
    ``tint`` is added to every pixel (another lab's stain)."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(("lymphocyte", "neutrophil")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = np.full((size, size, 3), (235, 225, 230), dtype=float)
            yy, xx = np.mgrid[:size, :size]
            r = size * (0.25 + 0.1 * k)
            cell = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < r ** 2
            nucleus = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (r / 2) ** 2
            img[cell] = (200, 120, 170)
            img[nucleus] = (90, 40, 130)
            img = np.clip(img + rng.normal(0, 8, img.shape) + np.asarray(tint), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{name}_{i:03d}.png")
    return root


def data_cfg(root, stain):
    cfg = compose_cfg("data=imagefolder", f"data.root={root}", f"data.stain={stain}", "data.decode_workers=1")
    return cfg.data


def hwc(images) -> np.ndarray:
    return torch.as_tensor(images).permute(0, 2, 3, 1).numpy()


@pytest.mark.known_answer
@pytest.mark.parametrize("method", ["reinhard", "macenko"])
def test_the_target_is_torchstains_fit_on_the_training_images_and_every_split_is_normalised_to_it(tmp_path, method):
    root = stained_folders(tmp_path / "cells")
    plain = build_data(data_cfg(root, "none"), image_size=24, exp_dir=tmp_path / "exp", cache_dir=None)
    bundle = build_data(data_cfg(root, method), image_size=24, exp_dir=tmp_path / "exp", cache_dir=None)
    train = hwc(plain.splits["train"].images)  # 12 images (< 256): all of them make the target
    lib = NumpyMacenkoNormalizer() if method == "macenko" else NumpyReinhardNormalizer()
    lib.fit(np.concatenate(list(train), axis=1))
    if method == "macenko":
        expected = {"he": lib.HERef, "max_c": lib.maxCRef}
    else:
        expected = {"means": lib.target_means, "stds": lib.target_stds}
    assert bundle.stain["method"] == method and bundle.stain["target"]["fit_images"] == len(train)
    for key, value in expected.items():
        np.testing.assert_allclose(bundle.stain["target"][key], value, rtol=1e-6)
    for split in ("train", "val", "test"):
        decoded = hwc(plain.splits[split].images)
        want = [lib.normalize(im)[0] if method == "macenko" else lib.normalize(im) for im in decoded]
        np.testing.assert_array_equal(hwc(bundle.splits[split].images), np.stack(want))
    assert bundle.stain["kept_as_decoded"] == {"train": 0, "val": 0, "test": 0}


def test_validation_and_test_images_never_change_the_target(tmp_path):
    from bench.data.build import DataBundle, normalise_stain
    from bench.data.store import SplitData

    root = stained_folders(tmp_path / "cells")
    plain = build_data(data_cfg(root, "none"), image_size=24, exp_dir=tmp_path / "exp", cache_dir=None)

    def tinted(*which):  # another lab's stain on the named splits' images
        splits = {s: SplitData((d.images.int() + torch.tensor([-60, 40, -30]).view(1, 3, 1, 1)).clamp(0, 255)
                               .to(torch.uint8) if s in which else d.images, d.labels, d.paths)
                  for s, d in plain.splits.items()}
        return normalise_stain(DataBundle(plain.class_names, splits, plain.root), "reinhard", None).stain["target"]

    assert tinted("val", "test") == tinted()
    assert tinted("train") != tinted()


def test_a_blank_image_is_kept_as_decoded_and_counted(tmp_path):
    images = torch.full((3, 3, 16, 16), 250, dtype=torch.uint8)  # white: no stained pixel
    cells = stained_folders(tmp_path / "cells", n=2, size=16)
    stained = torch.as_tensor(np.array(Image.open(next((cells / "lymphocyte").iterdir())))).permute(2, 0, 1)
    images[1] = stained
    target = fit_target("macenko", stained.unsqueeze(0))
    out, kept = normalise_images(images, target, None)
    assert kept == 2
    np.testing.assert_array_equal(out[0], hwc(images)[0])
    lib = NumpyMacenkoNormalizer()
    lib.HERef, lib.maxCRef = np.asarray(target.target["he"]), np.asarray(target.target["max_c"])
    np.testing.assert_array_equal(out[1], lib.normalize(hwc(images)[1])[0])


def test_a_target_cannot_be_fitted_on_blank_training_images(tmp_path):
    from bench.data.stain import StainError

    with pytest.raises(StainError, match=r"data.stain=macenko.*no pixel is stained"):
        fit_target("macenko", torch.full((4, 3, 16, 16), 250, dtype=torch.uint8))
    with pytest.raises(StainError, match=r"data.stain=reinhard.*no spread"):
        fit_target("reinhard", torch.full((4, 3, 16, 16), 128, dtype=torch.uint8))


def test_the_normalised_images_are_cached_per_target(tmp_path):
    root = stained_folders(tmp_path / "cells", n=4, size=16)
    images = torch.stack([torch.as_tensor(np.array(Image.open(f))).permute(2, 0, 1)
                          for f in sorted(root.rglob("*.png"))])
    target = fit_target("reinhard", images[:4])
    first, _ = normalise_images(images, target, tmp_path / "cache")
    files = sorted((tmp_path / "cache" / "stain").glob("*.npy"))
    assert len(files) == 1
    second, _ = normalise_images(images, target, tmp_path / "cache")
    assert isinstance(second, np.memmap) and np.array_equal(first, second)
    other = fit_target("reinhard", images[4:])
    normalise_images(images, other, tmp_path / "cache")
    assert len(sorted((tmp_path / "cache" / "stain").glob("*.npy"))) == 2


def test_bench_predict_normalises_new_images_to_the_checkpoints_target(tmp_path):
    """A member whose logits are its input's channel means: its probabilities show which pixels it saw."""
    from bench.predict import LoadedCheckpoint
    from bench.predict.images import member_probs
    from bench.data.transforms import Normalize

    root = stained_folders(tmp_path / "cells", n=3, size=16)
    arrays = [np.asarray(Image.open(f)) for f in sorted(root.rglob("*.png"))]
    target = fit_target("reinhard", torch.stack([torch.as_tensor(a).permute(2, 0, 1) for a in arrays[:3]]))
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    plain = LoadedCheckpoint(Path("a"), "m", ["r", "g", "b"], 16, [0, 0, 0], [1, 1, 1], model)
    stained = LoadedCheckpoint(Path("b"), "m", ["r", "g", "b"], 16, [0, 0, 0], [1, 1, 1], model, stain=target)
    norms = [Normalize(c.mean, c.std) for c in (plain, stained)]
    probs = member_probs([plain, stained], {plain.decoding: arrays}, norms, "cpu")
    lib = NumpyReinhardNormalizer()
    lib.target_means, lib.target_stds = np.asarray(target.target["means"]), np.asarray(target.target["stds"])
    for m, images in enumerate((arrays, [lib.normalize(a) for a in arrays])):
        means = np.stack([im.reshape(-1, 3).mean(axis=0) / 255.0 for im in images])
        want = np.exp(means) / np.exp(means).sum(axis=1, keepdims=True)
        np.testing.assert_allclose(probs[m], want, rtol=1e-5)


def test_a_stain_run_records_its_target_in_best_pt_and_shows_the_departure(make_cfg):
    from bench.training import run_training

    out = run_training(make_cfg("data.stain=reinhard", "trainer.epochs=1", "trainer.max_batches=1"))
    assert out["status"] == "completed", out
    run = Path(out["run_dir"])
    ckpt = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    assert StainNormalizer.from_record(ckpt["stain"]).method == "reinhard"
    import json

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stain"]["target"] == ckpt["stain"]["target"]
    assert "data.stain=reinhard (paper: none)" in metrics["protocol_deviations"]


def test_stain_options_are_checked_before_anything_runs():
    from bench.config.checks import validate_config

    bad = validate_config(compose_cfg("data.stain=vahadane"))
    assert any("data.stain='vahadane'" in p and "macenko" in p for p in bad)
    detector = validate_config(compose_cfg("experiment=detect_quickstart", "data.stain=macenko"))
    assert any("data.stain='macenko'" in p and "detector" in p for p in detector)


def test_a_memory_mapped_store_is_normalised_into_a_memory_mapped_file(tmp_path):
    """data.store=mmap: the normalised splits are read from the stain cache batch by batch, as the store is."""
    from bench.data.store import MappedImages

    root = stained_folders(tmp_path / "cells")
    cfg = compose_cfg("data=imagefolder", f"data.root={root}", "data.decode_workers=1", "data.store=mmap")
    plain = build_data(cfg.data, image_size=24, exp_dir=tmp_path / "exp", cache_dir=str(tmp_path / "cache"))
    stained = compose_cfg("data=imagefolder", f"data.root={root}", "data.decode_workers=1", "data.store=mmap",
                          "data.stain=reinhard")
    bundle = build_data(stained.data, image_size=24, exp_dir=tmp_path / "exp", cache_dir=str(tmp_path / "cache"))
    assert isinstance(bundle.splits["test"].images, MappedImages)
    lib = NumpyReinhardNormalizer()
    lib.target_means = np.asarray(bundle.stain["target"]["means"])
    lib.target_stds = np.asarray(bundle.stain["target"]["stds"])
    want = np.stack([lib.normalize(im) for im in hwc(plain.splits["test"].images[np.arange(len(plain.splits["test"]))])])
    got = hwc(bundle.splits["test"].images[np.arange(len(bundle.splits["test"]))])
    np.testing.assert_array_equal(got, want)
