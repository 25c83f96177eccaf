"""Scoring the chain against the truth (bench.cascade.scoring), by hand: matching at IoU 0.5, what
each stage loses, crowd regions, truth without our classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.cascade import scoring
from bench.detection.data import AnnotationReport, Boxes, DetectionSet
from bench.predict import checkpoints as predict_checkpoints


def test_matching_maximises_total_iou_not_greedy():
    # true A=(0,0,10,10), B=(6,0,16,10); pred p0=(3,0,13,10) overlaps both (IoU 7/13 each), p1=(0,0,10,10)=A.
    # Greedy by first pred would pair p0-A and leave p1 alone; the best total pairs p1-A, p0-B.
    pairs = scoring.match_boxes(np.array([[3, 0, 13, 10], [0, 0, 10, 10]], float),
                                np.array([[0, 0, 10, 10], [6, 0, 16, 10]], float))
    assert sorted(pairs) == [(0, 1), (1, 0)]
    # IoU below 0.5 is no match: (0,0,10,10) vs (5,0,15,10) = 50/150.
    assert scoring.match_boxes(np.array([[0, 0, 10, 10]], float), np.array([[5, 0, 15, 10]], float)) == []


def _cells(rows):
    frame = pd.DataFrame(rows, columns=["field", "xmin", "ymin", "xmax", "ymax", "detector_label", "classified",
                                        "cell_type"])
    return frame


@pytest.mark.known_answer
def test_cascade_scores_by_hand():
    truth = DetectionSet(Path("."), [
        Boxes("f1.png", 100, 100, np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60], [70, 70, 80, 80]],
                                           np.float32), ["neutrophil", "lymphocyte", "rbc", "rbc"]),
        Boxes("f2.png", 100, 100, np.array([[0, 0, 10, 10]], np.float32), ["lymphocyte"]),
    ], ["lymphocyte", "neutrophil", "rbc"], AnnotationReport())
    cells = _cells([
        ("f1.png", 0, 0, 10, 10, "wbc", True, "neutrophil"),      # right
        ("f1.png", 20, 20, 30, 30, "wbc", True, "neutrophil"),    # found, typed wrong (true lymphocyte)
        ("f1.png", 50, 50, 60, 60, "rbc", False, "rbc"),          # right, not typed
        ("f1.png", 90, 90, 99, 99, "wbc", True, "lymphocyte"),    # spurious
        # f1's rbc at 70,70 missed; f2's lymphocyte detected as rbc (found, never typed)
        ("f2.png", 1, 0, 10, 10, "rbc", False, "rbc"),
    ])
    m = scoring.score_cells(cells, ["f1.png", "f2.png"], truth, typed_classes=["lymphocyte", "neutrophil"])
    pc = m["per_class"]
    # neutrophil: 1 true, 2 predicted, 1 right -> sensitivity 1, precision 1/2
    assert pc["neutrophil"]["sensitivity"] == 1.0 and pc["neutrophil"]["precision"] == 0.5
    # lymphocyte: 2 true, 1 predicted (spurious), 0 right
    assert pc["lymphocyte"]["sensitivity"] == 0.0 and pc["lymphocyte"]["precision"] == 0.0
    assert pc["lymphocyte"]["spurious"] == 1 and pc["lymphocyte"]["missed"] == 0
    # rbc: 2 true, 2 predicted (one is f2's lymphocyte), 1 right; f1's second rbc missed
    assert pc["rbc"]["sensitivity"] == 0.5 and pc["rbc"]["precision"] == 0.5 and pc["rbc"]["missed"] == 1
    o = m["overall"]
    assert (o["n_true"], o["n_pred"], o["matched"], o["missed"], o["spurious"], o["correct"]) == (5, 5, 4, 1, 1, 2)
    assert o["accuracy_of_matched"] == 0.5
    # count errors, fields x classes (lymphocyte, neutrophil, rbc): f1 |1-1|,|2-1|,|1-2| ; f2 |0-1|,|0-0|,|1-0|
    assert m["count_error_per_field"]["f1.png"] == {"lymphocyte": 0, "neutrophil": 1, "rbc": 1}
    assert m["count_error_per_field"]["f2.png"] == {"lymphocyte": 1, "neutrophil": 0, "rbc": 1}
    assert o["count_error"] == pytest.approx(4 / 6)
    # finding nothing: the true counts, f1 (1, 1, 2) and f2 (1, 0, 0) -> 5 / 6
    assert o["count_error_finding_nothing"] == pytest.approx(5 / 6)
    assert pc["rbc"]["count_error"] == 1.0
    # stages over the 3 true white cells: f1's two were typed (found), f2's went as rbc (lost at detection);
    # of the 2 found, 1 typed right
    st = m["stages"]
    assert (st["n_true"], st["found"], st["correct"], st["lost_at_detection"], st["lost_at_classification"]) == \
        (3, 2, 1, 1, 1)
    assert st["detector_recall"] == pytest.approx(2 / 3) and st["classifier_accuracy"] == 0.5


def test_truth_without_our_classes_names_the_mapping_options():
    truth = DetectionSet(Path("."), [Boxes("f.png", 10, 10, np.array([[0, 0, 5, 5]], np.float32), ["WBC"])],
                         ["WBC"], AnnotationReport())
    cells = _cells([("f.png", 0, 0, 5, 5, "wbc", True, "neutrophil")])
    with pytest.raises(predict_checkpoints.PredictError, match="--truth-map.*--score-level detector"):
        scoring.score_cells(cells, ["f.png"], truth, typed_classes=["neutrophil", "lymphocyte"])
    m = scoring.score_cells(cells, ["f.png"], DetectionSet(Path("."), [Boxes(
        "f.png", 10, 10, np.array([[0, 0, 5, 5]], np.float32), ["wbc"])], ["wbc"], AnnotationReport()),
        level="detector", typed_classes=["neutrophil"])
    assert m["per_class"]["wbc"]["sensitivity"] == 1.0 and m["stages"] is None


# --------------------------------------------------------------------------- crowd regions in the truth
@pytest.mark.own_data
def test_cells_found_in_a_crowd_region_of_the_truth_are_ignored_not_spurious():
    """COCO's rule for iscrowd boxes, in the chain's scoring too: a predicted cell matched to no true cell
    but lying (by at least half its area) in a crowd region is left out, not counted spurious."""

    truth = DetectionSet(Path("."), [Boxes("f.png", 100, 100, np.array([[0, 0, 10, 10]], np.float32), ["rbc"],
                                           ignore=np.array([[50, 50, 90, 90]], np.float32), ignore_labels=["rbc"])],
                         ["rbc"], AnnotationReport())
    cells = pd.DataFrame([("f.png", 0, 0, 10, 10, "rbc", False, "rbc"),  # the true cell
                          ("f.png", 60, 60, 70, 70, "rbc", False, "rbc"),  # inside the crowd: ignored
                          ("f.png", 85, 20, 95, 30, "rbc", False, "rbc")],  # elsewhere: spurious
                         columns=["field", "xmin", "ymin", "xmax", "ymax", "detector_label", "classified", "cell_type"])
    m = scoring.score_cells(cells, ["f.png"], truth, level="detector")
    assert m["overall"]["spurious"] == 1 and m["overall"]["n_pred"] == 2
    assert m["overall"]["ignored_in_crowd_regions"] == 1
    assert m["per_class"]["rbc"]["precision"] == 0.5
