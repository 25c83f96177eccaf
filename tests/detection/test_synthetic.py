"""Synthetic smear fields (bench.detection.synthetic): deterministic, with exact boxes."""

from __future__ import annotations



from bench.detection.data import read_coco



# --------------------------------------------------------------------------- synthetic smears
def test_synthetic_smears_are_deterministic_with_exact_boxes(tmp_path):
    from bench.detection.synthetic import WHITE_TYPES, synthetic_smear_root

    a = synthetic_smear_root(tmp_path / "a", n_fields=6, size=128, seed=3)
    b = synthetic_smear_root(tmp_path / "b", n_fields=6, size=128, seed=3)
    assert (a / "instances.json").read_bytes() == (b / "instances.json").read_bytes()
    assert all((a / "images" / f.name).read_bytes() == f.read_bytes() for f in (b / "images").iterdir())
    dset = read_coco(a)
    # Nothing to fix in our own boxes (six fields need not show every white-cell type).
    assert set(dset.report.counts) <= {"label(s) with no box"}
    for im in dset.images:
        assert (im.boxes >= 0).all() and (im.boxes[:, 2] <= 128).all() and (im.boxes[:, 3] <= 128).all()
        white = [label for label in im.labels if label in WHITE_TYPES]
        assert 1 <= len(white) <= 3 and im.labels.count("rbc") >= 10
