"""Small things a user noticed (issue 25): whole first sentences in ``python -m bench``, and a CPU
precision trial that says "not tried" rather than "nan ms"."""

from __future__ import annotations

import logging
import math


def test_python_m_bench_gives_each_tools_whole_first_sentence():
    from bench.cli.commands import COMMANDS, list_commands

    text = list_commands()
    assert "bench-svm            SVMs on frozen-CNN features (Acevedo et al. 2019)" in text
    assert "(e.g. results/scratch_vs_pretrained" in text
    for line in text.splitlines()[3:]:
        assert line.count("(") == line.count(")"), line  # no description cut inside a parenthesis
    assert len(text.splitlines()) == 3 + len(COMMANDS)


def test_a_precision_never_timed_is_logged_as_not_tried(monkeypatch, caplog):
    from bench.training import precision

    monkeypatch.setattr(precision, "precision_trial", lambda *a, **k: ({False: 0.2, True: math.nan}, []))
    with caplog.at_level(logging.INFO, logger=precision.log.name):
        amp, _ = precision.choose_cpu_precision(None, None, None, None, device="cpu", aux_weight=0.0, grad_accum=1,
                                                on_batch=None, record_path=None, key="k", model_name="m")
    line = next(r.getMessage() for r in caplog.records if "step" in r.getMessage())
    assert amp is False and "nan" not in line and "bf16 not tried" in line, line
