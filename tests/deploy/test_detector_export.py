"""bench-export of a smear-chain detector: ONNX with free field sizes, checked on the run's validation fields;
the chain (bench-predict --detector EXPORT --classifier EXPORT) gives the cells and counts of the torch chain,
on ONNX Runtime and on OpenVINO; a format that cannot hold a detector says so; a failed check leaves nothing."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[deploy]')")

from bench.cli.export import main as export
from bench.cli.predict import main as predict
from tests.helpers import chain_argv


@pytest.fixture(scope="module")
def detector_export(detector_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("detexp") / "detector"
    _, det_dir = detector_run
    assert export([str(det_dir.root), "--out", str(out)]) == 0
    return det_dir, out


def test_the_detector_export_carries_its_runs_labels_thresholds_and_check(detector_export):
    det_dir, out = detector_export
    contract = json.loads((out / "model.json").read_text())
    metrics = json.loads((det_dir.root / "metrics.json").read_text())
    assert contract["kind"] == "detector" and contract["format"] == "onnx" and (out / "model.onnx").is_file()
    assert contract["labels"] == metrics["classes"] and contract["max_detections"] == metrics["max_detections"]
    assert contract["input_size"] == metrics["input_size"]
    saved = metrics["score_threshold"]
    for label in contract["labels"]:
        want = saved[label] if isinstance(saved, dict) else saved
        assert contract["score_thresholds"][label] == pytest.approx(want)
    assert contract["check"]["fields"] >= 1 and "onnxruntime" in contract["check"]["backends"]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_the_chain_on_exports_finds_and_types_the_cells_of_the_torch_chain(detector_export, classifier_run, fields,
                                                                            tmp_path, backend):
    if backend == "openvino":
        pytest.importorskip("openvino", reason="openvino is not installed (pip install -e '.[deploy]')")
    det_dir, det_export = detector_export
    folder, _ = fields
    cls_export = tmp_path / "classifier"
    assert export([str(classifier_run.root), "--out", str(cls_export)]) == 0
    low = ["--score-threshold", "0.05"]  # the tiny detector's scores are low: keep many boxes to compare
    assert predict(chain_argv(folder, det_dir.root, [classifier_run.root], tmp_path / "torch", *low)) == 0
    assert predict(chain_argv(folder, det_export, [cls_export], tmp_path / "exported", *low,
                              "--backend", backend)) == 0
    # The same cells field by field. Their numbers follow the detector's score order, where boxes of
    # (nearly) equal score, many in this barely trained detector, may come in either order: each torch cell is
    # paired with an exported one of its field by scipy's assignment on the box distance.
    a, b = (pd.read_csv(tmp_path / name / "cells.csv") for name in ("torch", "exported"))
    assert len(a) > 0 and len(a) == len(b)
    a, b = _paired(a, b)
    same = ["field", "detector_label", "classified", "cell_type", "low_confidence"]
    pd.testing.assert_frame_equal(a[same], b[same])
    # Boxes within a twentieth of a pixel (float32 sums in another order, amplified in a tiny box's decoding:
    # 0.03 px seen here), plus cells.csv's rounding to 0.01 px; scores within 1e-4 after rounding to 1e-4.
    boxes = ["xmin", "ymin", "xmax", "ymax"]
    np.testing.assert_allclose(a[boxes].to_numpy(), b[boxes].to_numpy(), atol=0.0601)
    np.testing.assert_allclose(a["detector_score"], b["detector_score"], atol=1.01e-4)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "torch" / "counts.csv"),
                                  pd.read_csv(tmp_path / "exported" / "counts.csv"))
    summary = json.loads((tmp_path / "exported" / "summary.json").read_text())
    assert summary["detector"]["backend"] == backend
    assert summary["classifiers"][next(iter(summary["classifiers"]))]["backends"] == [backend]


def _paired(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    from scipy.optimize import linear_sum_assignment

    boxes = ["xmin", "ymin", "xmax", "ymax"]
    rows_a, rows_b = [], []
    for field in a["field"].unique():
        ia, ib = np.flatnonzero(a["field"] == field), np.flatnonzero(b["field"] == field)
        assert len(ia) == len(ib), field
        cost = np.abs(a[boxes].to_numpy()[ia][:, None] - b[boxes].to_numpy()[ib][None]).max(-1)
        r, c = linear_sum_assignment(cost)
        rows_a += ia[r].tolist()
        rows_b += ib[c].tolist()
    return a.iloc[rows_a].reset_index(drop=True), b.iloc[rows_b].reset_index(drop=True)


def test_torchscript_cannot_hold_a_detector_and_a_failed_check_leaves_nothing(detector_run, tmp_path, capsys,
                                                                               monkeypatch):
    from bench.deploy import ExportError, export_detector
    from bench.deploy import detector as module

    _, det_dir = detector_run
    assert export([str(det_dir.root), "--format", "torchscript", "--out", str(tmp_path / "ts")]) == 2
    assert "--format torchscript holds classifiers only" in capsys.readouterr().err
    monkeypatch.setattr(module, "SCORE_TOLERANCE", -1.0)  # no difference is small enough
    with pytest.raises(ExportError, match="does not find PyTorch's boxes.*Nothing was written"):
        export_detector(det_dir.root, tmp_path / "failed", fields=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
