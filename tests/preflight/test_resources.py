"""Disks and memory the preflight must see: a read-only results folder, a store or checkpoints that
would not fit the disk (every swept image size counted), decoded images that would not fit in
memory. Disks and memory are simulated with monkeypatched readings."""

from __future__ import annotations

import errno

import pytest

from bench.preflight import plan_runs, preflight

from tests.helpers import disk_with


@pytest.mark.reliability
def test_the_preflight_counts_the_checkpoint_rewrite(tmp_path, monkeypatch):
    import bench.preflight.resources as pf

    monkeypatch.setattr(pf, "_param_count", lambda name, spec: 10**8)
    report = preflight(plan_runs(["-m", "model=resnet18,vgg11", "seed=0,1", "model.pretrained=false",
                                  f"paths.results_dir={tmp_path}"]))
    # 2 models x 2 seeds x 12 bytes, plus one rewrite of the largest (12 bytes): 60 bytes/param.
    expected = f"checkpoints need about {60 * 10**8 / 2**30:.1f} GiB"
    assert any(expected in n for n in report.notes + report.problems), report.format()


# --------------------------------------------------------------------------- 8, 9. disks the preflight must see
@pytest.mark.reliability
def test_a_read_only_results_folder_stops_the_preflight(tmp_path, monkeypatch):
    import tempfile

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    report = preflight(plan_runs(["model=simple_cnn", "model.pretrained=false", f"paths.results_dir={tmp_path}"]))
    assert any("is not writable" in p and "Read-only file system" in p for p in report.problems), report.format()
    assert not any("ok: disk" in n for n in report.format().splitlines())


@pytest.mark.reliability
def test_a_store_that_would_not_fit_the_disk_stops_the_preflight(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", disk_with(50 * 2**20))
    report = preflight(plan_runs(["model=simple_cnn", "model.pretrained=false", "data.image_size=2048",
                                  f"paths.results_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}"]))
    # 1,600 synthetic images x 2048 x 2048 x 3 bytes: about 18.8 GiB for the decoded-image store.
    assert any("decoded images" in p and "18.8 GiB" in p for p in report.problems), report.format()


@pytest.mark.reliability
def test_a_swept_image_size_whose_store_would_not_fit_stops_the_preflight(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", disk_with(50 * 2**20))
    report = preflight(plan_runs(["-m", "model=simple_cnn", "model.pretrained=false", "data.image_size=32,2048",
                                  f"paths.results_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}"]))
    # 1,600 synthetic images, a store at 32 px and one at 2048 px, 3 bytes a pixel.
    need = 1600 * 3 * (32 * 32 + 2048 * 2048)
    assert any("decoded images" in p and "32 px, 2048 px" in p and f"{need / 2**30:.1f} GiB" in p
               for p in report.problems), report.format()


def test_preflight_checks_memory_for_the_decoded_images(tmp_path, monkeypatch):
    import bench.data.store as store

    def plan(store_mode):
        return plan_runs(["-m", "model=simple_cnn,resnet18", "model.pretrained=false", "data.synthetic_n_per_class=100",
                          f"data.store={store_mode}", f"paths.results_dir={tmp_path}"])

    monkeypatch.setattr(store, "available_memory", lambda: 8 * 2**20)  # 8 MiB free
    # 800 images at resnet18's 224 px: 120 MB of uint8, twice that budgeted.
    forced = preflight(plan("memory"))
    assert not forced.ok
    assert "memory: 800 decoded images at 224 px need about 230 MiB, 8 MiB available" in forced.format()
    assert "data.store=auto" in forced.format()
    auto = preflight(plan("auto"))  # reads from the memory-mapped store instead, and says so
    assert auto.ok and any("memory-mapped" in w for w in auto.warnings)
    assert not preflight(plan("bogus")).ok
    monkeypatch.setattr(store, "available_memory", lambda: 64 * 2**30)
    roomy = preflight(plan("memory"))
    assert roomy.ok and any(n.startswith("memory:") for n in roomy.notes)
