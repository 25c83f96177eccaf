"""THE metrics.json record (bench.runs.record): one function builds it, and every kind of run
(classifier, detector, two-level classifier, SVM on CNN features) writes every shared key; the
metrics.json contract of bench.runs.files, and the validation number a sweeper reads back from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import runs
from bench.runs import files as run_files
from bench.runs.record import SHARED_KEYS, run_record


# Keys a reader relies on for every kind, named by hand: the leaderboard's ranking rule and cost columns.
MUST = {"select_by", "trainable_params_m", "precision", "weights", "recipe", "protocol_deviations", "warnings",
        "task", "config_hash", "epochs_run", "train_time_s"}


def _minimal(**overrides):
    args = dict(experiment="e", model="m", seed=0, task="classification", classes=["a", "b"], epochs=2,
                history=[{"seconds": 1.0, "train_img_s": 10.0}, {"seconds": 3.0, "train_img_s": float("nan")}],
                best_epoch=1, select_by="val_acc", warnings=[], val={"accuracy": 1.0}, test={"accuracy": 0.5},
                params_m=1.0, gflops=0.1, input_size=32, trainable_params_m=1.0, eval_img_s=5.0, peak_mem_mb=None,
                batch_size=4, grad_accum=1, oom_retry=False, amp=False, channels_last=False, precision="fp32",
                weights="scratch", n_excluded=0, data_root="/d", device="cpu", env={}, config_hash="h",
                recipe="gavas2021", protocol_deviations=[])
    return {**args, **overrides}


def test_the_record_has_every_shared_key_in_order_and_derives_the_epochs_from_the_history():
    record = run_record(**_minimal(), extra_key=1)
    assert list(record)[: len(SHARED_KEYS)] == list(SHARED_KEYS) and record["extra_key"] == 1
    assert MUST <= set(SHARED_KEYS)
    # Two epochs of 1 s and 3 s; the speed of the second was not measured (NaN): the mean of the first.
    assert (record["epochs_run"], record["train_time_s"], record["train_img_s"]) == (2, 4.0, 10.0)
    assert record["status"] == runs.STATUS_COMPLETED


def test_a_kind_that_leaves_a_shared_key_out_or_passes_it_twice_fails_at_once():
    args = _minimal()
    del args["select_by"]
    with pytest.raises(TypeError, match="select_by"):
        run_record(**args)
    with pytest.raises(TypeError, match="shared keys"):
        run_record(**_minimal(), epochs_run=3)  # derived from the history, not given


def _kinds(make_cfg, classifier_run, detector_run):
    """One completed run of each kind, smallest settings: {kind: metrics.json}. The classifier and the
    detector are the session's runs (conftest); the two protocols train their own."""
    from bench.protocols.svm_features import run_svm_protocol
    from bench.protocols.two_level import run_two_level

    out = {"classifier": runs.read_json(classifier_run.metrics), "detector": runs.read_json(detector_run[1].metrics)}
    two = run_two_level(make_cfg("experiment=cheuque2022_two_level", "data=synthetic", "model=simple_cnn",
                                 "model.pretrained=false", "model.freeze_backbone=false", "model.head_hidden=[]",
                                 "trainer.epochs=1", "data.image_size=32"))
    assert two["status"] == "completed", two.get("error")
    out["two_level"] = runs.read_json(Path(two["run_dir"]) / "metrics.json")
    svm = run_svm_protocol(make_cfg("experiment=acevedo2019_svm", "data=synthetic", "svm.feature_models=[simple_cnn]",
                                    "model.pretrained=false", "svm.kernels=[linear]", "svm.balance_to=null",
                                    "model.head_keep_fc=null"))
    assert [r["status"] for r in svm] == ["completed"], svm
    out["svm"] = runs.read_json(Path(svm[0]["run_dir"]) / "metrics.json")
    return out


def test_every_kind_of_run_writes_every_shared_key(make_cfg, classifier_run, detector_run):
    for kind, metrics in _kinds(make_cfg, classifier_run, detector_run).items():
        missing = [k for k in SHARED_KEYS if k not in metrics]
        assert not missing, (kind, missing)
        assert metrics["select_by"] in ("val_acc", "val_map"), kind
        assert metrics["task"] == ("detection" if kind == "detector" else "classification"), kind


# --------------------------------------------------------------------------- what a sweeper optimises
@pytest.mark.fidelity
def test_selection_score_reads_the_runs_select_by_from_its_record():
    from bench.runs import selection_score

    val = {"accuracy": 0.9, "balanced_accuracy": 0.7, "macro": {"f1": 0.6}}
    assert selection_score({"val": val}) == 0.9  # before trainer.select_by existed: accuracy
    assert selection_score({"val": val, "select_by": "val_balanced_acc"}) == 0.7
    assert selection_score({"val": val, "select_by": "val_macro_f1"}) == 0.6
    assert selection_score({"val": {"map": 0.3}, "select_by": "val_map"}) == 0.3


def test_metrics_json_is_written_and_read_by_one_contract(tmp_path):
    with pytest.raises(ValueError, match="no 'test'"):
        run_files.write_metrics(tmp_path, {"model": "m", "val": {}})
    assert not (tmp_path / "metrics.json").exists()  # nothing half-right on disk
    run_files.write_metrics(tmp_path, {"model": "m", "status": "completed", "val": {}, "test": {}})
    assert run_files.read_metrics(tmp_path)["model"] == "m"
    with pytest.raises(run_files.UnreadableMetrics, match="no 'members'"):
        run_files.read_metrics(tmp_path, "ensemble")
    (tmp_path / "metrics.json").write_text('{"model": "m", "status": "completed", "val": {}, "test": [1]}')
    with pytest.raises(run_files.UnreadableMetrics, match="'test' is not a mapping"):
        run_files.read_metrics(tmp_path / "metrics.json")
    with pytest.raises(FileNotFoundError):
        run_files.read_metrics(tmp_path / "absent")
