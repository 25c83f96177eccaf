"""Box annotations (bench.detection.data): COCO, VOC and CSV read the same boxes, label maps,
every bad annotation counted and skipped, CSV coordinates in pixels or fractions, duplicate COCO
image ids. Expected boxes are computed by hand from the values written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.data.imagefolder import DataError
from bench.detection.data import read_boxes_csv, read_coco, read_voc

from tests.helpers import BOX_COLUMNS, write_coco_file, write_fields


# --------------------------------------------------------------------------- COCO
@pytest.mark.own_data
def test_a_duplicate_coco_image_id_is_an_error_naming_both_files(tmp_path):
    root = write_fields(tmp_path, ["a.png", "b.png"])
    write_coco_file(root, [{"id": 7, "file_name": "a.png", "width": 64, "height": 48},
                      {"id": 7, "file_name": "b.png", "width": 64, "height": 48}],
               [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [1, 1, 10, 10], "iscrowd": 0}])
    with pytest.raises(DataError, match=r"image id 7.*a\.png.*b\.png"):
        read_coco(root)


def _fraction_rows(n_rows: int, names) -> list[list]:
    rng = np.random.default_rng(1)
    rows = []
    for k in range(n_rows):
        x0, y0 = rng.uniform(0.05, 0.6, 2).round(4)
        rows.append([names[k % len(names)], x0, y0, round(x0 + 0.2, 4), round(y0 + 0.25, 4), "rbc"])
    return rows


@pytest.mark.own_data
def test_fractions_with_one_rounding_slip_above_1_stay_fractions_and_the_slip_is_named(tmp_path):
    names = [f"f{i}.png" for i in range(6)]
    root = write_fields(tmp_path, names, size=(100, 50))
    rows = _fraction_rows(179, names)
    rows[17][3] = 1.02  # one rounding slip: xmax a little past the right edge
    pd.DataFrame(rows, columns=BOX_COLUMNS).to_csv(root / "annotations.csv", index=False)
    dset = read_boxes_csv(root)
    assert "fractions of the image size" in dset.report.notes[0]
    boxes = {name: [] for name in names}
    for name, x0, y0, x1, y1, _ in rows:  # by hand: fraction x (100, 50), clipped to the image
        boxes[name].append([x0 * 100, y0 * 50, min(x1, 1.0) * 100, y1 * 50])
    for im in dset.images:
        np.testing.assert_allclose(im.boxes, boxes[im.path], atol=1e-3)
    stray = " ".join(dset.report.lines())
    assert "1 row(s) with a coordinate above 1" in stray and "line 19" in stray  # the header is line 1


@pytest.mark.own_data
def test_a_csv_mixing_pixels_and_fractions_is_refused_with_the_counts(tmp_path):
    names = ["a.png", "b.png"]
    root = write_fields(tmp_path, names, size=(100, 50))
    rows = _fraction_rows(8, names) + [["a.png", 10, 5, 40, 30, "wbc"], ["b.png", 50, 10, 90, 45, "wbc"],
                                       ["b.png", 0, 0, 0, 0, "wbc"]]  # a zero-area row takes no side
    pd.DataFrame(rows, columns=BOX_COLUMNS).to_csv(root / "annotations.csv", index=False)
    with pytest.raises(DataError, match=r"8 row\(s\).*fractions.*2 row\(s\).*pixels.*data\.coordinates"):
        read_boxes_csv(root)
    pixels = read_boxes_csv(root, coordinates="pixel")  # said outright, the file is read as told
    assert [im.boxes.tolist()[-1] for im in pixels.images if im.path == "a.png"] == [[10.0, 5.0, 40.0, 30.0]]


@pytest.mark.own_data
def test_pixel_boxes_with_a_zero_area_row_stay_pixels(tmp_path):
    root = write_fields(tmp_path, ["a.png"], size=(100, 50))
    pd.DataFrame([["a.png", 10, 5, 40, 30, "wbc"], ["a.png", 0, 0, 0, 0, "wbc"]], columns=BOX_COLUMNS).to_csv(
        root / "annotations.csv", index=False)
    dset = read_boxes_csv(root)
    assert "pixel coordinates (detected)" in dset.report.notes[0]
    assert dset.images[0].boxes.tolist() == [[10.0, 5.0, 40.0, 30.0]]


# Three images of 64 x 48 px; boxes in pixels (xmin, ymin, xmax, ymax).
BOXES = {
    "a.png": [((4, 5, 20, 30), "wbc"), ((30, 10, 50, 40), "rbc")],
    "b.png": [((10, 10, 30, 30), "rbc")],
    "c.png": [],  # a negative: no cells
}


def _images(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in BOXES:
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / name)
    return folder


def _coco(root: Path, extra_annotations=(), extra_images=(), extra_categories=()) -> Path:
    cats = [{"id": 1, "name": "wbc"}, {"id": 2, "name": "rbc"}, *extra_categories]
    cid = {c["name"]: c["id"] for c in cats}
    images, anns = [], []
    for i, (name, objs) in enumerate(BOXES.items(), start=1):
        images.append({"id": i, "file_name": name, "width": 64, "height": 48})
        for (x0, y0, x1, y1), label in objs:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cid[label],
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": 1, "iscrowd": 0})
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images + list(extra_images), "annotations": anns + list(extra_annotations),
                                "categories": cats}))
    return path


def _as_dict(dset):
    return {im.path.split("/")[-1]: sorted(zip(np.round(im.boxes, 3).tolist(), im.labels)) for im in dset.images}


def _expected():
    return {name: sorted((list(map(float, box)), label) for box, label in objs) for name, objs in BOXES.items()}


# --------------------------------------------------------------------------- formats
def test_coco_voc_and_csv_read_the_same_boxes(tmp_path):
    coco_root = _images(tmp_path / "coco")
    _coco(coco_root)
    assert _as_dict(read_coco(coco_root)) == _expected()

    voc = tmp_path / "voc"
    _images(voc / "JPEGImages")
    (voc / "Annotations").mkdir()
    for name, objs in BOXES.items():
        objects = "".join(f"<object><name>{label}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
                          f"<ymax>{y1}</ymax></bndbox></object>" for (x0, y0, x1, y1), label in objs)
        (voc / "Annotations" / f"{name[:-4]}.xml").write_text(f"<annotation><filename>{name}</filename>{objects}"
                                                              "</annotation>")
    assert _as_dict(read_voc(voc)) == _expected()
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    for split, stem in (("train", "a"), ("val", "b"), ("test", "c")):
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text(stem + "\n")
    assert {im.path: im.split for im in read_voc(voc).images} == {
        "JPEGImages/a.png": "train", "JPEGImages/b.png": "val", "JPEGImages/c.png": "test"}

    csv_root = _images(tmp_path / "csv")
    rows = [(name, *box, label) for name, objs in BOXES.items() for box, label in objs]
    pd.DataFrame(rows, columns=["image", "xmin", "ymin", "xmax", "ymax", "label"]).to_csv(
        csv_root / "annotations.csv", index=False)
    pixels = read_boxes_csv(csv_root)
    assert {k: v for k, v in _as_dict(pixels).items()} == {k: v for k, v in _expected().items() if v}
    assert "pixel coordinates (detected)" in pixels.report.notes[0]
    # The same boxes as fractions of the image size (bcd's convention).
    frac = [(name, x0 / 64, y0 / 48, x1 / 64, y1 / 48, label) for name, x0, y0, x1, y1, label in rows]
    pd.DataFrame(frac, columns=["image", "xmin", "ymin", "xmax", "ymax", "label"]).to_csv(
        csv_root / "annotations.csv", index=False)
    fractional = read_boxes_csv(csv_root)
    assert "fractions of the image size" in fractional.report.notes[0]
    for a, b in zip(fractional.images, pixels.images):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)


def test_label_map_renames_and_merges(tmp_path):
    root = _images(tmp_path / "coco")
    _coco(root)
    dset = read_coco(root, label_map={"wbc": "cell", "rbc": "cell"})
    assert dset.classes == ["cell"] and dset.class_counts()["cell"] == 3


def test_every_bad_annotation_is_counted_and_skipped_never_a_crash(tmp_path):
    root = _images(tmp_path / "coco")
    Image.new("RGB", (64, 48)).save(root / "d.png")
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    bad = [
        {"id": 100, "image_id": 2, "category_id": 2, "bbox": [5, 5, 0, 10], "iscrowd": 0},  # zero width
        {"id": 101, "image_id": 2, "category_id": 2, "bbox": [40, 30, 40, 40], "iscrowd": 0},  # leaves the image
        {"id": 102, "image_id": 2, "category_id": 2, "bbox": [100, 100, 5, 5], "iscrowd": 0},  # wholly outside
        {"id": 103, "image_id": 99, "category_id": 2, "bbox": [1, 1, 5, 5], "iscrowd": 0},  # no such image
        {"id": 104, "image_id": 2, "category_id": 7, "bbox": [1, 1, 5, 5], "iscrowd": 0},  # no such category
    ]
    extra_images = [{"id": 4, "file_name": "missing.png", "width": 10, "height": 10},
                    {"id": 5, "file_name": "broken.png", "width": 10, "height": 10},
                    {"id": 6, "file_name": "d.png", "width": 64, "height": 48}]
    _coco(root, bad, extra_images, [{"id": 3, "name": "platelet"}])
    dset = read_coco(root)
    counts = dset.report.counts
    assert counts["zero-area or inverted box(es) dropped"] == 1
    assert counts["box(es) clipped to the image"] == 1
    assert counts["box(es) outside the image dropped"] == 1
    assert counts["annotation(s) naming a missing image entry dropped"] == 1
    assert counts["box(es) with an unknown category dropped"] == 1
    assert counts["image(s) missing or unreadable, left out"] == 2
    assert counts["label(s) with no box"] == 1 and dset.report.examples["label(s) with no box"] == ["platelet"]
    paths = sorted(im.path for im in dset.images)
    assert paths == ["a.png", "b.png", "c.png", "d.png"]  # negatives (c, d) kept
    b = next(im for im in dset.images if im.path == "b.png")
    assert b.boxes.tolist() == [[10.0, 10.0, 30.0, 30.0], [40.0, 30.0, 64.0, 48.0]]  # the clipped box
