"""The overnight sweep through the real command: failure isolation, a second invocation that trains
nothing, resume after SIGKILL, a sweep over detector families."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from bench import runs
from bench.cli.train import cli
from bench.models import register_model

from tests.helpers import SMALL_DETECTOR as SMALL, SMOKE_OVERRIDES


def _cli_args(tmp_path, cache_dir, *extra):
    return [*SMOKE_OVERRIDES, f"paths.results_dir={tmp_path / 'results'}", f"paths.cache_dir={cache_dir}", *extra]


class _Exploding(torch.nn.Module):
    """A model that fails at its first forward pass, as a broken architecture would at run time."""

    def __init__(self, num_classes):
        super().__init__()
        self.fc = torch.nn.Linear(3, num_classes)

    def forward(self, x):
        raise RuntimeError("exploding_net always fails")


@pytest.fixture
def exploding_net(monkeypatch):
    """Register a failing model for one test only (the registry is restored afterwards)."""
    from bench.models import _registry

    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))
    register_model("exploding_net", input_size=32, min_input_size=8, family="test", source="custom")(
        lambda num_classes, pretrained=False: _Exploding(num_classes)
    )
    return "exploding_net"


def test_sweep_isolates_a_failing_model_and_exits_nonzero(tmp_path, cache_dir, capsys, exploding_net):
    args = _cli_args(tmp_path, cache_dir, "-m", "model=simple_cnn,exploding_net,squeezenet1_1",
                     "trainer.epochs=1", "trainer.max_batches=2")
    assert cli(args) == 1
    captured = capsys.readouterr()
    assert "1 run(s) failed" in captured.err and "exploding_net always fails" in captured.err
    assert "simple_cnn" in captured.out and "squeezenet1_1" in captured.out  # the leaderboard is printed
    board = pd.read_csv(tmp_path / "results" / "synthetic" / "leaderboard.csv").set_index("model")
    assert board.loc["exploding_net", "status"] == "failed"
    assert "exploding_net always fails" in board.loc["exploding_net", "error"]
    assert pd.isna(board.loc["exploding_net", "rank"])
    assert (board.loc[["simple_cnn", "squeezenet1_1"], "status"] == "completed").all()


def test_second_invocation_of_a_finished_sweep_trains_nothing(tmp_path, cache_dir, capsys):
    args = _cli_args(tmp_path, cache_dir, "-m", "model=simple_cnn,squeezenet1_1", "seed=0,1",
                     "trainer.epochs=1", "trainer.max_batches=1")
    assert cli(args) == 0
    exp = tmp_path / "results" / "synthetic"
    stamps = {p: p.stat().st_mtime_ns for p in exp.glob("runs/*/seed*/metrics.json")}
    assert len(stamps) == 4
    assert cli(args) == 0
    assert {p: p.stat().st_mtime_ns for p in exp.glob("runs/*/seed*/metrics.json")} == stamps
    board = pd.read_csv(exp / "leaderboard.csv")
    assert len(board) == 4 and (board["status"] == "completed").all()
    summary = pd.read_csv(exp / "summary.csv")
    assert set(summary["model"]) == {"simple_cnn", "squeezenet1_1"}


# --------------------------------------------------------------------------- resume after SIGKILL
def _train_cmd(results: Path, cache_dir: Path) -> list[str]:
    return [
        sys.executable, "-c", "from bench.cli.train import cli; raise SystemExit(cli())",
        *SMOKE_OVERRIDES, "trainer.epochs=4", "data.synthetic_n_per_class=60", "trainer.checkpoint_every_s=0",
        f"paths.results_dir={results}", f"paths.cache_dir={cache_dir}",
    ]


@pytest.mark.slow
def test_a_run_killed_mid_training_resumes_to_the_same_metrics(tmp_path, cache_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same threads in every process: bitwise-equal math
    reference = tmp_path / "uninterrupted"
    subprocess.run(_train_cmd(reference, cache_dir), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    run_dir = killed / "synthetic" / "runs" / "simple_cnn" / "seed0"
    proc = subprocess.Popen(_train_cmd(killed, cache_dir), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run_dir / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    status = runs.read_json(run_dir / "status.json")
    assert status["status"] == "running" and not (run_dir / "metrics.json").exists()
    done_before = len(pd.read_csv(run_dir / "history.csv"))
    assert 1 <= done_before < 4

    subprocess.run(_train_cmd(killed, cache_dir), check=True, env=env, capture_output=True)
    a = runs.read_json(reference / "synthetic" / "runs" / "simple_cnn" / "seed0" / "metrics.json")
    b = runs.read_json(run_dir / "metrics.json")
    for key in ("val", "test", "best_epoch", "epochs_run"):
        assert a[key] == b[key], key
    ha = pd.read_csv(reference / "synthetic" / "runs" / "simple_cnn" / "seed0" / "history.csv")
    hb = pd.read_csv(run_dir / "history.csv")
    pd.testing.assert_frame_equal(ha[["train_loss", "val_acc"]], hb[["train_loss", "val_acc"]])


def _voc_from_coco(coco_root: Path, voc: Path) -> Path:
    """The synthetic smear fields as a Pascal VOC folder (Annotations/*.xml, JPEGImages/)."""
    data = json.loads((coco_root / "instances.json").read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    (voc / "Annotations").mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    for im in data["images"]:
        Image.open(coco_root / "images" / im["file_name"]).save(voc / "JPEGImages" / im["file_name"])
        objects = "".join(
            f"<object><name>{names[a['category_id']]}</name><bndbox><xmin>{a['bbox'][0]}</xmin>"
            f"<ymin>{a['bbox'][1]}</ymin><xmax>{a['bbox'][0] + a['bbox'][2]}</xmax>"
            f"<ymax>{a['bbox'][1] + a['bbox'][3]}</ymax></bndbox></object>"
            for a in data["annotations"] if a["image_id"] == im["id"])
        (voc / "Annotations" / f"{Path(im['file_name']).stem}.xml").write_text(
            f"<annotation><filename>{im['file_name']}</filename>{objects}</annotation>")
    return voc


def test_a_sweep_over_detector_families_on_a_voc_folder(tmp_path, cache_dir, capsys):
    """bench-train -m data=voc model=a,b: one row per detector. The two families take different
    constructor options (the quickstart's Faster R-CNN proposal counts are its own), and an option a
    detector does not take is a preflight problem before anything trains."""
    from bench.detection.synthetic import synthetic_smear_root

    voc = _voc_from_coco(synthetic_smear_root(cache_dir, n_fields=12, size=96, seed=5), tmp_path / "voc")
    args = [*SMALL, "data=voc", f"data.root={voc}", "trainer.epochs=1", "trainer.max_batches=1",
            f"paths.results_dir={tmp_path / 'results'}", f"paths.cache_dir={cache_dir}", "experiment_name=vocsweep"]
    models = "model=fasterrcnn_mobilenet_v3_large_320_fpn,ssdlite320_mobilenet_v3_large"
    assert cli([*args, "-m", models]) == 0
    board = pd.read_csv(tmp_path / "results" / "vocsweep" / "leaderboard.csv").set_index("model")
    assert set(board.index) == {"fasterrcnn_mobilenet_v3_large_320_fpn", "ssdlite320_mobilenet_v3_large"}
    assert (board["status"] == "completed").all() and (board["kind"] == "detector").all()
    assert sorted(board["rank"]) == [1, 2]
    capsys.readouterr()
    assert cli([*args, "-m", models, "+model.detector_kwargs.rpn_batch_size_per_image=64"]) == 2
    err = capsys.readouterr().err
    assert "ssdlite320_mobilenet_v3_large: model.detector_kwargs rpn_batch_size_per_image" in err
    assert "fasterrcnn_mobilenet_v3_large_320_fpn:" not in err  # Faster R-CNN takes it
