"""The field pictures (bench.cascade.draw): the legend below the field."""

from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

from bench import runs
from bench.cli import predict as predict_cli

from tests.helpers import chain_argv

pytestmark = pytest.mark.own_data


def test_field_pictures_carry_a_legend(fresh, detector_run, classifier_run, tmp_path):
    """Below the field: a strip with a swatch per class in its colour, the truth's missed cells in white and
    what '?' means; the field itself is drawn above it, unchanged in size."""
    folder, instances = fresh
    _, det = detector_run
    out = tmp_path / "out"
    assert predict_cli.main(chain_argv(folder, det.root, [classifier_run.root], out, "--score-threshold", "0.05",
                                       "--score-level", "detector", "--truth", str(instances),
                                       "--truth-map", ",".join(f"{c}=wbc" for c in (
                                           "basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte",
                                           "neutrophil")))) == 0
    picture = Image.open(out / "fields" / "field-0000.png").convert("RGB")
    assert picture.size[0] == 512 and picture.size[1] > 512  # the 96 px field enlarged to 512, the legend below
    from bench.cascade.draw import legend_entries, picture_colours

    strip = np.asarray(picture)[512:]
    summary = runs.read_json(out / "summary.json")
    entries = legend_entries(picture_colours(summary["classes"], summary["detector"]["labels"]), truth=True,
                             typed=summary["classes"])
    texts = [text for text, _ in entries]
    assert any("missed" in t for t in texts) and any("'?'" in t and "low confidence" in t for t in texts)
    assert {t.split(":")[0] for t in texts} >= set(summary["classes"]) | set(summary["detector"]["labels"])
    for text, colour in entries:
        if colour is not None:
            assert (strip.reshape(-1, 3) == colour).all(axis=1).any(), text  # every swatch is drawn
