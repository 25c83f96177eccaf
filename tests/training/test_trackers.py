"""logger=csv|tensorboard|mlflow, read back with each tool's own reader (pandas, TensorBoard's
event accumulator, the MLflow client), against the run folder's history.csv and metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from bench import runs
from bench.training import run_training as train


EPOCHS = 2


@pytest.fixture
def logged(make_cfg, tmp_path):
    def run(kind: str):
        out = train(make_cfg(f"logger={kind}", f"trainer.epochs={EPOCHS}", f"experiment_name=log_{kind}"))
        assert out["status"] == "completed", out.get("error")
        rd = runs.RunDir(Path(out["run_dir"]))
        return rd, pd.read_csv(rd.history), runs.read_json(rd.metrics)

    return run


def test_csv_logger(logged, tmp_path):
    rd, history, metrics = logged("csv")
    folder = tmp_path / "results" / "log_csv" / "logs" / "csv" / "simple_cnn-seed0"
    epochs = pd.read_csv(folder / "epochs.csv")
    assert epochs["epoch"].tolist() == [1, 2]
    pd.testing.assert_series_equal(epochs["val_acc"], history["val_acc"])
    params = json.loads((folder / "params.json").read_text())
    assert params["trainer.epochs"] == EPOCHS and params["model.name"] == "simple_cnn"
    final = json.loads((folder / "final.json").read_text())
    assert final["final_test_acc"] == pytest.approx(metrics["test"]["accuracy"])
    assert final["final_val_balanced_acc"] == pytest.approx(metrics["val"]["balanced_accuracy"])


def test_tensorboard_logger(logged, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rd, history, metrics = logged("tensorboard")
    folder = tmp_path / "results" / "log_tensorboard" / "logs" / "tensorboard" / "simple_cnn-seed0"
    events = EventAccumulator(str(folder))
    events.Reload()
    val = events.Scalars("val_acc")
    assert [e.step for e in val] == [1, 2]
    assert [e.value for e in val] == pytest.approx(history["val_acc"].tolist(), abs=1e-6)
    assert [e.value for e in events.Scalars("lr")] == pytest.approx(history["lr"].tolist())


def test_mlflow_logger_with_its_local_store(logged, tmp_path):
    from mlflow.tracking import MlflowClient

    rd, history, metrics = logged("mlflow")
    client = MlflowClient(f"file:{(tmp_path / 'results' / 'mlruns').resolve()}")
    (run,) = client.search_runs([client.get_experiment_by_name("log_mlflow").experiment_id])
    assert run.info.run_name == "simple_cnn-seed0" and run.info.status == "FINISHED"
    assert run.data.params["trainer.epochs"] == str(EPOCHS)
    steps = client.get_metric_history(run.info.run_id, "val_acc")
    assert [m.step for m in steps] == [1, 2]
    assert [m.value for m in steps] == pytest.approx(history["val_acc"].tolist())
    assert run.data.metrics["final_test_acc"] == pytest.approx(metrics["test"]["accuracy"])


def test_a_failing_logger_never_fails_the_run(make_cfg, monkeypatch, caplog):
    from bench.training import loggers

    def broken(self, epoch, numbers):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(loggers.CsvLogger, "epoch", broken)
    out = train(make_cfg("logger=csv", "trainer.epochs=1"))
    assert out["status"] == "completed"
    assert "logger=csv failed (OSError: disk full (simulated))" in caplog.text
