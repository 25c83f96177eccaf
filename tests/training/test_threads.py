"""CPU threads (bench.training.threads): each job takes its share of the cores."""

from __future__ import annotations


import pytest
import torch


pytestmark = pytest.mark.own_data


# --------------------------------------------------------------------------- CPU threads
def test_each_job_takes_its_share_of_the_cores(tmp_path, monkeypatch):
    import socket
    import subprocess
    import sys

    from bench.training import threads

    share = threads.CpuShare(tmp_path)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with share:
            assert share.threads(cores=8) == 8  # alone
            host = socket.gethostname()
            (tmp_path / "active" / f"{host}-{other.pid}").touch()  # a second live job on this machine
            (tmp_path / "active" / f"{host}-999999999").touch()  # a job that died without cleaning up
            (tmp_path / "active" / f"othernode-{other.pid}").touch()  # a job on another cluster node
            assert share.jobs() == 2 and share.threads(cores=8) == 4 and share.threads(cores=1) == 1
            assert not (tmp_path / "active" / f"{host}-999999999").exists()  # the stale entry is gone
        assert not share.me.exists()
    finally:
        other.kill()
    before = torch.get_num_threads()
    fixed = threads.thread_policy(3, tmp_path)
    try:
        with fixed:
            assert torch.get_num_threads() == 3 and fixed.rebalance() == 3
    finally:
        torch.set_num_threads(before)
