"""The embedded synthetic dataset: layout, determinism, caching, concurrent first use, class cues."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest
from PIL import Image

from bench.data.synthetic import CLASS_NAMES, MARKER_NAME, make_synthetic_dataset, render_cell, synthetic_root


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_layout_sizes_and_modes(tmp_path):
    root = make_synthetic_dataset(tmp_path / "s", n_per_class=3, image_size=40, seed=1)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(CLASS_NAMES)
    files = sorted(root.rglob("*.png"))
    assert len(files) == 3 * len(CLASS_NAMES)
    with Image.open(files[0]) as img:
        assert img.mode == "RGB" and img.size == (40, 40)


def test_deterministic_across_folders(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", n_per_class=2, image_size=32, seed=7)
    b = make_synthetic_dataset(tmp_path / "b", n_per_class=2, image_size=32, seed=7)
    assert _tree(a) == _tree(b)
    c = make_synthetic_dataset(tmp_path / "c", n_per_class=2, image_size=32, seed=8)
    assert _tree(a) != _tree(c)


def test_second_call_is_a_cache_hit_and_new_parameters_rebuild(tmp_path):
    root = make_synthetic_dataset(tmp_path / "s", n_per_class=2, image_size=32, seed=0)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*.png")}
    make_synthetic_dataset(root, n_per_class=2, image_size=32, seed=0)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.png")} == stamps
    make_synthetic_dataset(root, n_per_class=3, image_size=32, seed=0)
    assert len(list(root.rglob("*.png"))) == 3 * len(CLASS_NAMES)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_classes_look_different(tmp_path):
    root = make_synthetic_dataset(tmp_path / "s", n_per_class=12, image_size=48, seed=0)
    means = {}
    for name in CLASS_NAMES:
        arrays = [np.asarray(Image.open(p), dtype=float) for p in sorted((root / name).glob("*.png"))]
        means[name] = np.mean([a.reshape(-1, 3).mean(0) for a in arrays], axis=0)
    # Mean colour differs between classes (nucleus size and stain), e.g. platelets vs lymphocytes.
    spread = np.ptp(np.stack(list(means.values())), axis=0)
    assert spread.max() > 5


def _build(root):
    synthetic_root(root, n_per_class=4, image_size=32, seed=3)


def test_concurrent_first_use_builds_one_complete_tree(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_build, args=(tmp_path,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    root = synthetic_root(tmp_path, n_per_class=4, image_size=32, seed=3)
    assert len(list(root.rglob("*.png"))) == 4 * len(CLASS_NAMES)
    reference = make_synthetic_dataset(tmp_path / "ref", n_per_class=4, image_size=32, seed=3)
    assert _tree(root) == _tree(reference)


def test_render_cell_size_mode_and_rng_only():
    for c, name in enumerate(CLASS_NAMES):
        for size in (24, 64):
            img = render_cell(name, np.random.default_rng([5, c]), size)
            assert img.mode == "RGB" and img.size == (size, size)
        again = render_cell(name, np.random.default_rng([5, c]), 64)
        assert again.tobytes() == img.tobytes()  # depends on the generator's state only
    with pytest.raises(ValueError):
        render_cell("macrophage", np.random.default_rng(0), 32)


def _centre_stats(name, n=12, size=48):
    """Mean RGB and share of dark (nucleus/fragment) pixels in the central half."""
    c = CLASS_NAMES.index(name)
    crops = np.stack([np.asarray(render_cell(name, np.random.default_rng([0, c, i]), size), float)
                      [size // 4: 3 * size // 4, size // 4: 3 * size // 4] for i in range(n)])
    return crops.reshape(-1, 3).mean(0), (crops.mean(-1) < 120).mean()


def test_class_cues_are_drawn():
    stats = {name: _centre_stats(name) for name in CLASS_NAMES}
    red_minus_blue = {name: rgb[0] - rgb[2] for name, (rgb, _) in stats.items()}
    # Eosinophils: cytoplasm packed with orange-red granules, unlike the blue/lilac cells.
    for other in ("lymphocyte", "monocyte", "neutrophil", "ig", "basophil"):
        assert red_minus_blue["eosinophil"] > red_minus_blue[other] + 15, other
    # Platelets: no white-cell nucleus in the centre; every other class has one.
    assert stats["platelet"][1] < 0.02
    for name in CLASS_NAMES[:-1]:
        assert stats[name][1] > 0.05, name


def test_interrupted_build_is_redrawn(tmp_path):
    root = tmp_path / "s"
    (root / "neutrophil").mkdir(parents=True)
    (root / "neutrophil" / "neutrophil_00099.png").write_bytes(b"half-written")  # no marker
    make_synthetic_dataset(root, n_per_class=2, image_size=32, seed=0)
    assert (root / MARKER_NAME).is_file()
    names = sorted(p.name for p in (root / "neutrophil").iterdir())
    assert names == ["neutrophil_00000.png", "neutrophil_00001.png"]
