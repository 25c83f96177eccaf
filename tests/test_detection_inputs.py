"""Detection inputs attacked as another lab's user would (issue 25): every case that was silently
wrong or failed late, on small folders the tests write. Expected boxes are computed by hand from
the values written, never by bench.detection itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.data.imagefolder import DataError
from bench.detection.data import read_boxes_csv, read_coco


def _fields(folder: Path, names, size=(64, 48)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / name)
    return folder


def _coco_file(root: Path, images, annotations, categories=({"id": 1, "name": "wbc"},)) -> Path:
    path = root / "instances.json"
    path.write_text(json.dumps({"images": list(images), "annotations": list(annotations),
                                "categories": list(categories)}))
    return path


# --------------------------------------------------------------------------- COCO
def test_a_duplicate_coco_image_id_is_an_error_naming_both_files(tmp_path):
    root = _fields(tmp_path, ["a.png", "b.png"])
    _coco_file(root, [{"id": 7, "file_name": "a.png", "width": 64, "height": 48},
                      {"id": 7, "file_name": "b.png", "width": 64, "height": 48}],
               [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [1, 1, 10, 10], "iscrowd": 0}])
    with pytest.raises(DataError, match=r"image id 7.*a\.png.*b\.png"):
        read_coco(root)


# --------------------------------------------------------------------------- boxes CSV coordinates
COLUMNS = ["image", "xmin", "ymin", "xmax", "ymax", "label"]


def _fraction_rows(n_rows: int, names) -> list[list]:
    rng = np.random.default_rng(1)
    rows = []
    for k in range(n_rows):
        x0, y0 = rng.uniform(0.05, 0.6, 2).round(4)
        rows.append([names[k % len(names)], x0, y0, round(x0 + 0.2, 4), round(y0 + 0.25, 4), "rbc"])
    return rows


def test_fractions_with_one_rounding_slip_above_1_stay_fractions_and_the_slip_is_named(tmp_path):
    names = [f"f{i}.png" for i in range(6)]
    root = _fields(tmp_path, names, size=(100, 50))
    rows = _fraction_rows(179, names)
    rows[17][3] = 1.02  # one rounding slip: xmax a little past the right edge
    pd.DataFrame(rows, columns=COLUMNS).to_csv(root / "annotations.csv", index=False)
    dset = read_boxes_csv(root)
    assert "fractions of the image size" in dset.report.notes[0]
    boxes = {name: [] for name in names}
    for name, x0, y0, x1, y1, _ in rows:  # by hand: fraction x (100, 50), clipped to the image
        boxes[name].append([x0 * 100, y0 * 50, min(x1, 1.0) * 100, y1 * 50])
    for im in dset.images:
        np.testing.assert_allclose(im.boxes, boxes[im.path], atol=1e-3)
    stray = " ".join(dset.report.lines())
    assert "1 row(s) with a coordinate above 1" in stray and "line 19" in stray  # the header is line 1


def test_a_csv_mixing_pixels_and_fractions_is_refused_with_the_counts(tmp_path):
    names = ["a.png", "b.png"]
    root = _fields(tmp_path, names, size=(100, 50))
    rows = _fraction_rows(8, names) + [["a.png", 10, 5, 40, 30, "wbc"], ["b.png", 50, 10, 90, 45, "wbc"],
                                       ["b.png", 0, 0, 0, 0, "wbc"]]  # a zero-area row takes no side
    pd.DataFrame(rows, columns=COLUMNS).to_csv(root / "annotations.csv", index=False)
    with pytest.raises(DataError, match=r"8 row\(s\).*fractions.*2 row\(s\).*pixels.*data\.coordinates"):
        read_boxes_csv(root)
    pixels = read_boxes_csv(root, coordinates="pixel")  # said outright, the file is read as told
    assert [im.boxes.tolist()[-1] for im in pixels.images if im.path == "a.png"] == [[10.0, 5.0, 40.0, 30.0]]


def test_pixel_boxes_with_a_zero_area_row_stay_pixels(tmp_path):
    root = _fields(tmp_path, ["a.png"], size=(100, 50))
    pd.DataFrame([["a.png", 10, 5, 40, 30, "wbc"], ["a.png", 0, 0, 0, 0, "wbc"]], columns=COLUMNS).to_csv(
        root / "annotations.csv", index=False)
    dset = read_boxes_csv(root)
    assert "pixel coordinates (detected)" in dset.report.notes[0]
    assert dset.images[0].boxes.tolist() == [[10.0, 5.0, 40.0, 30.0]]


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
    _coco_file(root, images, anns)
    return root


def test_a_detector_trains_on_16_bit_fields_rescaled_not_white(tmp_path, cache_dir, monkeypatch):
    """By hand: a 16-bit field's range (1000..3000) becomes 0..255, so the left half is black and the
    right half white in every channel; convert('RGB') made the whole field white."""
    from bench.detection import fit as det_fit
    from bench.training import run_training

    from .conftest import SMALL_DETECTOR, compose_cfg

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
