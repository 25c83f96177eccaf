"""bench-sweep plan's arithmetic, worked by hand, and its cache of measurements."""

from __future__ import annotations

import pytest

from bench.sweep.plan import RunCost, measure, resources, run_cost
from tests.helpers import compose_cfg


@pytest.mark.known_answer
def test_a_runs_hours_and_the_arrays_asks_by_hand():
    cfg = compose_cfg("trainer.epochs=4")  # 64/24/12 of 1,000 images: 640 train, 240 val, 120 test
    cost = run_cost(cfg, {"train": 100.0, "eval": 200.0, "peak_mem_gb": 1.0, "image_size": 64}, 1000)
    # 4 x (640/100 + 240/200) + 120/200 = 4 x 7.6 + 0.6 = 31.0 s
    assert cost.hours == pytest.approx(31.0 / 3600)
    other = RunCost("b", 0, 64, 50.0, 100.0, 3.0, 1.0)
    asks = resources([cost, other], 1000)
    # slowest: 1 h -> 60 min x 2 + 10 = 130; memory: 3.0 x 2 + store 2 x 1000 x 3 x 64 x 64 B (0.023 GiB) -> ceil 7 + 1
    assert asks == {"timeout_min": 130, "mem_gb": 8}


def test_a_measurement_is_taken_once_per_machine_and_setting(tmp_path, monkeypatch):
    import torch

    import bench.benchmark.ceiling as ceiling

    calls = []

    def fake(name, **kw):
        calls.append((name, kw["image_size"], kw["batch_size"]))
        return {"train": 10.0, "eval": 20.0}

    monkeypatch.setattr(ceiling, "measure_ceiling", fake)
    cfg = compose_cfg("model=resnet18", "data.image_size=64", "trainer.batch_size=8")
    first = measure(cfg, torch.device("cpu"), tmp_path)
    second = measure(cfg, torch.device("cpu"), tmp_path)
    assert calls == [("resnet18", 64, 8)] and first == second and first["train"] == 10.0
    measure(compose_cfg("model=resnet18", "data.image_size=96", "trainer.batch_size=8"), torch.device("cpu"), tmp_path)
    assert len(calls) == 2  # another input size is another measurement
