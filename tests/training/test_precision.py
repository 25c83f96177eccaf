"""Precision (bench.training.precision): the defaults per device, bf16 and channels-last on the CPU,
the CPU precision trial, its record and how it is logged."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from omegaconf import OmegaConf

from bench import runs
from bench.training import run_training as train
from bench.training.engine import cpu_bf16_supported
from bench.training.precision import fold_trial, resolve_precision


def test_bf16_autocast_and_channels_last_run_on_cpu(make_cfg):
    out = train(make_cfg("trainer.amp=true", "trainer.channels_last=true", "trainer.epochs=1", "trainer.max_batches=2"))
    assert out["status"] == "completed"


# --------------------------------------------------------------------------- CPU precision trial
def _t(amp=None, cl=None):
    return OmegaConf.create({"amp": amp, "channels_last": cl})


def test_resolve_precision_defaults():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision(_t(), cuda) == (True, True)
    assert resolve_precision(_t(False, False), cuda) == (False, False)
    assert resolve_precision(_t(), cpu) == ((None if cpu_bf16_supported() else False), True)
    assert resolve_precision(_t(True, False), cpu) == (True, False)
    assert resolve_precision(_t(), torch.device("mps")) == (False, False)


def test_cpu_precision_trial_is_recorded_and_refined(make_cfg, tmp_path):
    cfg = make_cfg("trainer.amp=null", "trainer.channels_last=null")
    first = train(cfg)
    assert first["status"] == "completed"
    metrics = runs.read_json(runs.RunDir(Path(first["run_dir"])).metrics)
    assert isinstance(metrics["amp"], bool) and metrics["channels_last"] is True
    cache = Path(cfg.paths.cache_dir) / "cpu_precision.json"
    if not cpu_bf16_supported():
        assert not metrics["amp"]
        return
    (record,) = runs.read_json(cache).values()
    assert record["amp"] == metrics["amp"] and record["trials"] == 1
    # A second run on this machine adds its trial to the record and follows the record's verdict.
    again = train(make_cfg("trainer.amp=null", "trainer.channels_last=null", "experiment_name=again"))
    (refined,) = runs.read_json(cache).values()
    assert refined["trials"] == 2
    assert refined["step_s_fp32"] <= record["step_s_fp32"] and refined["step_s_bf16"] <= record["step_s_bf16"]
    assert runs.read_json(runs.RunDir(Path(again["run_dir"])).metrics)["amp"] == refined["amp"]


def test_precision_record_keeps_the_fastest_steps():
    # A trial on a busy machine (both steps slow, bf16 looking worse) does not undo a quiet one.
    quiet = fold_trial({False: 0.100, True: 0.060}, {})
    assert quiet == {"amp": True, "step_s_fp32": 0.100, "step_s_bf16": 0.060, "trials": 1}
    busy = fold_trial({False: 0.200, True: 0.400}, quiet)
    assert busy["amp"] is True and busy["trials"] == 2 and busy["step_s_bf16"] == 0.060
    # A choice made under load is corrected by the next quiet trial.
    loaded = fold_trial({False: 0.300, True: 0.280}, {})
    assert loaded["amp"] is False
    assert fold_trial({False: 0.100, True: 0.060}, loaded)["amp"] is True
    # bf16 must win by BF16_CPU_MIN_GAIN; a missing time never wins.
    assert fold_trial({False: 0.100, True: 0.095}, {})["amp"] is False
    assert fold_trial({False: 0.100, True: float("nan")}, {})["amp"] is False


def test_a_precision_never_timed_is_logged_as_not_tried(monkeypatch, caplog):
    from bench.training import precision

    monkeypatch.setattr(precision, "precision_trial", lambda *a, **k: ({False: 0.2, True: math.nan}, []))
    with caplog.at_level(logging.INFO, logger=precision.log.name):
        amp, _ = precision.choose_cpu_precision(None, None, None, None, device="cpu", aux_weight=0.0, grad_accum=1,
                                                on_batch=None, record_path=None, key="k", model_name="m")
    line = next(r.getMessage() for r in caplog.records if "step" in r.getMessage())
    assert amp is False and "nan" not in line and "bf16 not tried" in line, line
