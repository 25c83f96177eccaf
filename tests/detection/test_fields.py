"""Detection fields (bench.detection.fields): one decoder (16-bit fields rescaled), truncated
fields left out and listed, empty splits named, box augmentation that moves boxes with the pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image


from tests.helpers import BOX_COLUMNS, small_detector_cfg, write_coco_file, write_fields, write_voc


# --------------------------------------------------------------------------- one decoder
def _sixteen_bit_coco(root: Path, n: int = 9) -> Path:
    """``n`` 16-bit grey fields of 64 x 64: left half 1000, right half 3000 (a range far above 255),
    one wbc box each."""
    (root / "images").mkdir(parents=True)
    grey = np.full((64, 64), 1000, dtype=np.uint16)
    grey[:, 32:] = 3000
    images, anns = [], []
    for i in range(n):
        marked = grey.copy()
        marked[63, i] = 1001  # distinct files (identical bytes share a split), still black after rescaling
        Image.fromarray(marked).save(root / "images" / f"f{i}.png")
        images.append({"id": i + 1, "file_name": f"f{i}.png", "width": 64, "height": 64})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [8, 8, 16, 16], "iscrowd": 0})
    write_coco_file(root, images, anns)
    return root


@pytest.mark.own_data
def test_a_detector_trains_on_16_bit_fields_rescaled_not_white(tmp_path, cache_dir, monkeypatch):
    """By hand: a 16-bit field's range (1000..3000) becomes 0..255, so the left half is black and the
    right half white in every channel; convert('RGB') made the whole field white."""
    from bench.training import detector as det_fit
    from bench.training import run_training

    from tests.helpers import SMALL_DETECTOR, compose_cfg

    root = _sixteen_bit_coco(tmp_path / "coco")
    assert Image.open(root / "images" / "f0.png").mode.startswith("I")
    seen = []
    real = det_fit._train_epoch

    def record(model, samples, *args, **kwargs):
        seen.extend(tensor for tensor, _ in samples)
        return real(model, samples, *args, **kwargs)

    monkeypatch.setattr(det_fit, "_train_epoch", record)
    out = run_training(compose_cfg(*SMALL_DETECTOR, "data=coco", f"data.root={root}", "data.image_size=64",
                                   "trainer.epochs=1", "trainer.max_batches=1", "experiment_name=sixteen",
                                   f"paths.results_dir={tmp_path / 'results'}", f"paths.cache_dir={cache_dir}"))
    assert out["status"] == "completed", out.get("error")
    assert seen
    for tensor in seen:
        assert tensor.shape == (3, 64, 64)
        assert int(tensor[:, :, :30].max()) == 0 and int(tensor[:, :, 34:].min()) == 255, tensor[0, 0, ::8]


@pytest.mark.own_data
def test_a_voc_folder_without_a_val_list_is_an_error_naming_it(tmp_path, cache_dir):
    from bench.training import run_training

    voc = write_voc(tmp_path / "voc", 6, {"train": [0, 1, 2, 3], "test": [4, 5]})
    out = run_training(small_detector_cfg(tmp_path, cache_dir, "data=voc", f"data.root={voc}"))
    assert out["status"] == "failed"
    assert "validation split has no field" in out["error"] and "ImageSets/Main/val.txt (missing)" in out["error"]


@pytest.mark.own_data
def test_a_manifest_that_leaves_a_split_empty_is_an_error_not_a_perfect_count(tmp_path, cache_dir):
    """A boxes CSV split by the experiment's manifest, edited so no field is in test."""
    from bench.training import run_training

    names = [f"f{i}.png" for i in range(9)]
    root = write_fields(tmp_path / "csv", names)
    pd.DataFrame([[n, 4 + i, 5, 30, 30, "rbc"] for i, n in enumerate(names)], columns=BOX_COLUMNS).to_csv(
        root / "annotations.csv", index=False)
    cfg = small_detector_cfg(tmp_path, cache_dir, "data=boxes_csv", f"data.root={root}", "experiment_name=csv")
    assert run_training(cfg)["status"] == "completed"
    manifest_path = tmp_path / "results" / "csv" / "manifest.csv"
    manifest = pd.read_csv(manifest_path)
    manifest["split"] = manifest["split"].replace("test", "train")
    manifest.to_csv(manifest_path, index=False)
    out = run_training(small_detector_cfg(tmp_path, cache_dir, "data=boxes_csv", f"data.root={root}",
                                          "experiment_name=csv", "seed=1"))
    assert out["status"] == "failed"
    assert "test split has no field" in out["error"] and str(manifest_path) in out["error"]


# --------------------------------------------------------------------------- fails late, wrong words
@pytest.mark.own_data
def test_a_truncated_field_is_left_out_and_listed_not_a_crash_without_its_name(tmp_path, cache_dir):
    from bench.training import run_training

    voc = write_voc(tmp_path / "voc", 10)
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(voc / "JPEGImages" / "f9.jpg", quality=95)
    data = (voc / "JPEGImages" / "f9.jpg").read_bytes()
    (voc / "JPEGImages" / "f9.jpg").write_bytes(data[: len(data) // 2])  # a copy cut short
    (voc / "JPEGImages" / "f9.png").unlink()
    xml = voc / "Annotations" / "f9.xml"
    xml.write_text(xml.read_text().replace("f9.png", "f9.jpg"))
    out = run_training(small_detector_cfg(tmp_path, cache_dir, "data=voc", f"data.root={voc}"))
    assert out["status"] == "completed", out.get("error")
    excluded = pd.read_csv(Path(out["run_dir"]) / "excluded.csv")
    assert excluded["path"].tolist() == ["JPEGImages/f9.jpg"] and "truncated" in excluded["reason"][0]
    report = json.loads((Path(out["run_dir"]) / "annotation_report.json").read_text())
    assert report["counts"]["image(s) that do not decode, left out"] == 1


def test_scale_jitter_moves_boxes_with_the_pixels():
    """data.scale_jitter: after the zoom (and flips), every white pixel is inside a kept box and
    every kept box is mostly white: checked on the image, not with the transform's own box math."""
    import torch
    from torchvision import tv_tensors

    from bench.detection.fields import box_augment

    img = torch.zeros(3, 100, 100, dtype=torch.uint8)
    img[:, 20:40, 50:70] = 255
    img[:, 80:95, 5:20] = 255
    boxes = torch.tensor([[50.0, 20, 70, 40], [5, 80, 20, 95]])
    transform = box_augment([0.6, 1.6])
    zooms = set()
    for seed in range(12):
        torch.manual_seed(seed)
        image, out, labels = transform(tv_tensors.Image(img), tv_tensors.BoundingBoxes(
            boxes, format="XYXY", canvas_size=(100, 100)), torch.tensor([1, 2]))
        white = image[0] > 200
        inside = torch.zeros_like(white)
        for x0, y0, x1, y1 in out.tolist():
            inside[max(0, int(y0 - 1.5)):int(y1 + 1.5) + 1, max(0, int(x0 - 1.5)):int(x1 + 1.5) + 1] = True
            box = image[0, int(round(y0)):int(round(y1)), int(round(x0)):int(round(x1))]
            assert (box > 128).float().mean() > 0.6, (seed, out.tolist())
        assert not (white & ~inside).any(), seed
        assert len(labels) == len(out)
        zooms.add(round(float((out[:, 2] - out[:, 0]).max()), 1))
    assert len(zooms) > 3  # the boxes really change size
