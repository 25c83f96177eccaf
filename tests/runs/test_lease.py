"""The run folder's lease across hosts (bench/runs/lease.py): another host's fresh lease makes the run
busy, a stale one is taken over with a warning, the heartbeat advances while a run holds it, and it is
gone when the run ends."""

from __future__ import annotations

import json
import logging
import time

import pytest

from bench import runs
from bench.runs.lease import Lease, read_lease


def other_host(path, heartbeat_age_s: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": "node-b", "pid": 4242, "token": "b", "heartbeat": time.time() - heartbeat_age_s}))


@pytest.mark.reliability
def test_another_hosts_fresh_lease_makes_the_run_busy_naming_it(tmp_path):
    rd = runs.RunDir.for_run(tmp_path / "exp", "resnet18", 0)
    other_host(rd.root.parent / ".seed0.lease", heartbeat_age_s=5)
    with pytest.raises(runs.RunBusy, match=r"node-b pid 4242 \(heartbeat \d+ s ago\)"):
        with rd.lock():
            pass
    assert read_lease(rd.root.parent / ".seed0.lease")["host"] == "node-b"  # left as it was


@pytest.mark.reliability
def test_a_stale_lease_of_another_host_is_taken_over_with_a_warning_and_released_after(tmp_path, caplog):
    rd = runs.RunDir.for_run(tmp_path / "exp", "resnet18", 0)
    path = rd.root.parent / ".seed0.lease"
    other_host(path, heartbeat_age_s=3600)
    with caplog.at_level(logging.WARNING), rd.lock():
        mine = read_lease(path)
        assert mine["host"] != "node-b"
    assert "taking over the lease of node-b pid 4242" in caplog.text
    assert not path.exists()


@pytest.mark.reliability
def test_the_heartbeat_advances_while_the_lease_is_held(tmp_path):
    path = tmp_path / ".run.lease"
    with Lease(path, heartbeat_s=0.05):
        first = read_lease(path)["heartbeat"]
        time.sleep(0.3)
        assert read_lease(path)["heartbeat"] > first
    assert not path.exists()
