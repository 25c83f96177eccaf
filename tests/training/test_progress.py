"""Progress bars (bench.training.progress): sparse when logging to a file."""

from __future__ import annotations

import time

import torch



def test_progress_bar_is_sparse_when_logging_to_a_file(capsys):
    from bench.training.progress import EpochProgress

    with EpochProgress(True, 100, "model epoch 1/1") as bar:
        for _ in range(100):  # 0.5 s: a terminal's bar (0.1 s interval) would be redrawn ~5 times
            time.sleep(0.005)
            bar.on_batch({"loss": torch.tensor(1.0), "n": 32})
    err = capsys.readouterr().err  # pytest's capture is not a terminal
    assert 0 < err.count("model epoch 1/1") <= 3
