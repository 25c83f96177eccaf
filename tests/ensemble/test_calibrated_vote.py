"""A soft vote of calibrated members (bench-ensemble calibrated=true): each member's probabilities
scaled by its own validation temperature before the vote, and the ensemble says so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench import runs
from bench.ensemble import combine, run_ensemble
from bench.metrics.calibration import apply_temperature


def test_a_calibrated_soft_vote_scales_each_member_by_its_validation_temperature(make_cfg):
    from bench.training import run_training

    dirs = []
    for seed in (0, 1):
        out = run_training(make_cfg("trainer.epochs=1", f"seed={seed}"))
        assert out["status"] == "completed", out.get("error")
        dirs.append(Path(out["run_dir"]))
    exp_dir = dirs[0].parents[2]
    result = run_ensemble(exp_dir, method="soft", k=2, calibrated=True, name="cal")
    temps = result.metrics["probabilities"]["temperatures"]
    recorded = {f"simple_cnn/seed{i}": runs.read_json(d / "metrics.json")["calibration"]["temperature"]
                for i, d in enumerate(dirs)}
    assert temps == recorded
    # The vote, recomputed from the members' own saved test probabilities and their temperatures.
    members = [m["member"] for m in result.metrics["members"]]
    frames = [pd.read_csv(dirs[int(m.split("seed")[1])] / "predictions_test.csv").sort_values("path") for m in members]
    classes = result.metrics["classes"]
    probs = np.stack([apply_temperature(f[[f"prob_{c}" for c in classes]].to_numpy(), recorded[m])
                      for f, m in zip(frames, members)])
    expected = combine(probs, None, "soft").pred
    got = pd.read_csv(exp_dir / "ensembles" / "cal" / "predictions_test.csv").sort_values("path")["predicted"]
    assert got.tolist() == [classes[i] for i in expected]
    assert run_ensemble(exp_dir, method="soft", k=2, name="raw").metrics["probabilities"] == "raw"
