"""The report's detection section (bench.report) on the session's detector run: the table, the
figures, an undefined class AP shown as a dash."""

from __future__ import annotations


import numpy as np
import pytest

from bench import runs



@pytest.mark.known_answer
def test_an_undefined_class_ap_is_empty_in_the_leaderboard_and_a_dash_in_the_report(detector_run, tmp_path):
    """metrics.json's None (a class absent from the test fields) must not turn back into 0.0 downstream."""
    import shutil

    from bench.results import leaderboard as lb
    from bench import report
    from bench.results.rows import class_column

    _, rd = detector_run
    exp = tmp_path / "exp"
    run = exp / "runs" / rd.root.parent.name / rd.root.name
    shutil.copytree(rd.root, run, ignore=shutil.ignore_patterns("*.pt"))
    metrics = runs.read_json(run / "metrics.json")
    metrics["test"]["per_class_ap"]["platelet"] = None
    runs.write_json_atomic(run / "metrics.json", metrics)
    row = lb.build_leaderboard(exp).iloc[0]
    assert row["kind"] == "detector" and np.isnan(row[class_column("platelet")])
    text = report.build_report(exp, tmp_path / "report").read_text()
    header, _, first = [line for line in text.split("## Detection")[1].splitlines() if line.startswith("|")][:3]
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in first.split("|")]))
    assert cells["AP platelet"] == "-" and cells["AP rbc"] != "-"


def test_the_report_has_a_detection_section(detector_run, tmp_path):
    from bench import report

    _, rd = detector_run
    path = report.build_report(rd.root.parents[2], tmp_path / "report")
    text = path.read_text()
    metrics = runs.read_json(rd.metrics)
    section = text.split("## Detection")[1].split("## Failed")[0]
    assert f"{metrics['test']['map']:.3f}" in section and f"{metrics['test']['count_error']:.3f}" in section
    for name in ("detection_pr_curves.png", "detection_fields.png"):
        assert (tmp_path / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and name in text
    assert "No classifier runs here" in text
