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
    from bench.training import detector as det_fit
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


# --------------------------------------------------------------------------- empty splits
def _voc(root: Path, n: int, lists: dict[str, list[int]] | None = None, labels=None) -> Path:
    """A VOC folder of ``n`` 64 x 48 fields with one box each (label ``labels[i]``, default rbc) and
    the ImageSets/Main lists given (split -> field numbers)."""
    _fields(root / "JPEGImages", [f"f{i}.png" for i in range(n)])
    (root / "Annotations").mkdir()
    for i in range(n):
        label = labels[i] if labels else "rbc"
        (root / "Annotations" / f"f{i}.xml").write_text(
            f"<annotation><filename>f{i}.png</filename><object><name>{label}</name><bndbox><xmin>{4 + i % 5}</xmin>"
            "<ymin>5</ymin><xmax>30</xmax><ymax>30</ymax></bndbox></object></annotation>")
    if lists:
        (root / "ImageSets" / "Main").mkdir(parents=True)
        for split, numbers in lists.items():
            (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"f{i}\n" for i in numbers))
    return root


def _detector_cfg(tmp_path, cache_dir, *overrides):
    from .conftest import SMALL_DETECTOR, compose_cfg

    return compose_cfg(*SMALL_DETECTOR, "data.image_size=64", "trainer.epochs=1", "trainer.max_batches=1",
                       f"paths.results_dir={tmp_path / 'results'}", f"paths.cache_dir={cache_dir}", *overrides)


def test_a_voc_folder_without_a_val_list_is_an_error_naming_it(tmp_path, cache_dir):
    from bench.training import run_training

    voc = _voc(tmp_path / "voc", 6, {"train": [0, 1, 2, 3], "test": [4, 5]})
    out = run_training(_detector_cfg(tmp_path, cache_dir, "data=voc", f"data.root={voc}"))
    assert out["status"] == "failed"
    assert "validation split has no field" in out["error"] and "ImageSets/Main/val.txt (missing)" in out["error"]


def test_a_manifest_that_leaves_a_split_empty_is_an_error_not_a_perfect_count(tmp_path, cache_dir):
    """A boxes CSV split by the experiment's manifest, edited so no field is in test."""
    from bench.training import run_training

    names = [f"f{i}.png" for i in range(9)]
    root = _fields(tmp_path / "csv", names)
    pd.DataFrame([[n, 4 + i, 5, 30, 30, "rbc"] for i, n in enumerate(names)], columns=COLUMNS).to_csv(
        root / "annotations.csv", index=False)
    cfg = _detector_cfg(tmp_path, cache_dir, "data=boxes_csv", f"data.root={root}", "experiment_name=csv")
    assert run_training(cfg)["status"] == "completed"
    manifest_path = tmp_path / "results" / "csv" / "manifest.csv"
    manifest = pd.read_csv(manifest_path)
    manifest["split"] = manifest["split"].replace("test", "train")
    manifest.to_csv(manifest_path, index=False)
    out = run_training(_detector_cfg(tmp_path, cache_dir, "data=boxes_csv", f"data.root={root}", "experiment_name=csv",
                                     "seed=1"))
    assert out["status"] == "failed"
    assert "test split has no field" in out["error"] and str(manifest_path) in out["error"]


def test_an_empty_classification_split_is_an_error_naming_it(tmp_path, cache_dir):
    from bench.data.build import build_data

    from .conftest import SMOKE_OVERRIDES, compose_cfg

    cfg = compose_cfg(*SMOKE_OVERRIDES, f"paths.cache_dir={cache_dir}")
    exp = tmp_path / "exp"
    build_data(cfg.data, image_size=32, exp_dir=exp, cache_dir=str(cache_dir))
    manifest = pd.read_csv(exp / "manifest.csv")
    manifest["split"] = manifest["split"].replace("val", "train")
    manifest.to_csv(exp / "manifest.csv", index=False)
    with pytest.raises(DataError, match=r"validation split.*no image.*manifest\.csv"):
        build_data(cfg.data, image_size=32, exp_dir=exp, cache_dir=str(cache_dir))


# --------------------------------------------------------------------------- fails late, wrong words
def test_a_truncated_field_is_left_out_and_listed_not_a_crash_without_its_name(tmp_path, cache_dir):
    from bench.training import run_training

    voc = _voc(tmp_path / "voc", 10)
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(voc / "JPEGImages" / "f9.jpg", quality=95)
    data = (voc / "JPEGImages" / "f9.jpg").read_bytes()
    (voc / "JPEGImages" / "f9.jpg").write_bytes(data[: len(data) // 2])  # a copy cut short
    (voc / "JPEGImages" / "f9.png").unlink()
    xml = voc / "Annotations" / "f9.xml"
    xml.write_text(xml.read_text().replace("f9.png", "f9.jpg"))
    out = run_training(_detector_cfg(tmp_path, cache_dir, "data=voc", f"data.root={voc}"))
    assert out["status"] == "completed", out.get("error")
    excluded = pd.read_csv(Path(out["run_dir"]) / "excluded.csv")
    assert excluded["path"].tolist() == ["JPEGImages/f9.jpg"] and "truncated" in excluded["reason"][0]
    report = json.loads((Path(out["run_dir"]) / "annotation_report.json").read_text())
    assert report["counts"]["image(s) that do not decode, left out"] == 1


def test_a_one_off_label_typo_is_named_with_its_files_and_the_label_map_fix(tmp_path, cache_dir):
    from bench.preflight import plan_runs, preflight
    from bench.training import run_training

    labels = ["WBC"] * 11 + ["wbc"]
    voc = _voc(tmp_path / "voc", 12, labels=labels)
    args = [f"data.root={voc}", "data=voc", f"paths.results_dir={tmp_path / 'results'}"]
    report = preflight(plan_runs(["experiment=detect_quickstart", *args]))
    problem = " ".join(report.problems)
    assert "'wbc': 1 box(es) on 1 field(s) (JPEGImages/f11.png), like 'WBC'" in problem, report.format()
    assert "data.label_map='{wbc: WBC}'" in problem
    out = run_training(_detector_cfg(tmp_path, cache_dir, *args[:2]))
    assert out["status"] == "failed" and "data.label_map" in out["error"] and "remove the folder" not in out["error"]


def test_the_preflight_says_the_official_voc_split_as_a_note_not_a_warning(tmp_path):
    from bench.preflight import plan_runs, preflight

    voc = _voc(tmp_path / "voc", 9, {"train": [0, 1, 2, 3, 4], "val": [5, 6], "test": [7, 8]})
    report = preflight(plan_runs(["experiment=detect_quickstart", "data=voc", f"data.root={voc}",
                                  f"paths.results_dir={tmp_path / 'results'}"]))
    assert any("official split of ImageSets/Main (9 images)" in n for n in report.notes), report.format()
    assert not any("official split" in w for w in report.warnings)
