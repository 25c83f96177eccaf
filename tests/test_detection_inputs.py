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
