"""bench-export: the ONNX model gives the run's own validation probabilities (saved by PyTorch when it was
trained) through ONNX Runtime with model.json's contract; a failed check leaves nothing; model.json
carries the run's validation choices."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[deploy]')")
pytest.importorskip("onnxscript", reason="onnxscript is not installed (pip install -e '.[deploy]')")

from bench import runs
from bench.runs import files as run_files


def test_the_export_reproduces_the_runs_validation_probabilities_through_onnx_runtime(classifier_run, tmp_path):
    import onnxruntime as ort

    from bench.cli.export import main as export
    from bench.data.imagefolder import try_decode

    out = tmp_path / "exported"
    assert export([str(classifier_run.root), "--out", str(out)]) == 0
    contract = json.loads((out / "model.json").read_text())
    metrics = runs.read_json(classifier_run.metrics)
    paths, _, _, saved = run_files.read_predictions(classifier_run.predictions("val"), metrics["classes"])
    assert contract["classes"] == metrics["classes"] and contract["input_size"] == metrics["input_size"]
    # Only model.json's contract and ONNX Runtime: decode, scale to [0, 1], normalise, run, softmax.
    from pathlib import Path

    images = np.stack([try_decode((str(Path(metrics["data_root"]) / p), contract["input_size"], *contract["geometry"]))[0]
                       for p in paths]).astype(np.float32) / 255.0
    x = ((images - np.array(contract["mean"], np.float32)) / np.array(contract["std"], np.float32)).transpose(0, 3, 1, 2)
    logits = ort.InferenceSession(str(out / contract["file"]), providers=["CPUExecutionProvider"]).run(
        None, {contract["input"]: np.ascontiguousarray(x, dtype=np.float32)})[0]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(probs, saved, atol=1e-4)
    assert contract["temperature"] == pytest.approx(metrics["calibration"]["temperature"])
    assert contract["referral_threshold"] == metrics["calibration"]["referral"]["threshold"]
    assert contract["check"]["images"] == len(paths) and contract["check"]["same_class"] == len(paths)


def test_a_failed_check_leaves_nothing_and_an_existing_folder_is_never_overwritten(classifier_run, tmp_path):
    from bench.deploy import ExportError, export_run

    out = tmp_path / "exported"
    with pytest.raises(ExportError, match="does not give PyTorch's answers.*Nothing was written"):
        export_run(classifier_run.root, out, tolerance=-1.0)  # no difference is small enough
    assert not out.exists() and list(tmp_path.iterdir()) == []
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="exists and is not empty"):
        export_run(classifier_run.root, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


FORMAT_BACKENDS = [("onnx", "onnxruntime"), ("onnx", "openvino"), ("openvino", "openvino"), ("torchscript", "torch")]


@pytest.mark.parametrize("fmt,backend", FORMAT_BACKENDS, ids=[f"{f}-{b}" for f, b in FORMAT_BACKENDS])
def test_bench_predict_runs_an_export_folder_with_the_answers_of_its_run(classifier_run, tmp_path, fmt, backend):
    """-c EXPORT (each format on each backend that runs it) and -c RUN (PyTorch) on the same images: the same
    classes, counts and low-confidence flags, probabilities within 1e-4."""
    import pandas as pd

    if backend == "openvino" or fmt == "openvino":
        pytest.importorskip("openvino", reason="openvino is not installed (pip install -e '.[deploy]')")
    from bench.cli.export import main as export
    from bench.cli.predict import main as predict

    metrics = runs.read_json(classifier_run.metrics)
    from pathlib import Path

    images = Path(metrics["data_root"])
    assert export([str(classifier_run.root), "--format", fmt, "--out", str(tmp_path / "exported")]) == 0
    contract = json.loads((tmp_path / "exported" / "model.json").read_text())
    assert contract["format"] == fmt and backend in contract["check"]["backends"]
    assert (tmp_path / "exported" / contract["file"]).is_file()
    assert predict([str(images), "-c", str(classifier_run.root / "best.pt"), "--out", str(tmp_path / "torch"),
                    "--device", "cpu"]) == 0
    assert predict([str(images), "-c", str(tmp_path / "exported"), "--backend", backend, "--out",
                    str(tmp_path / "exported-run"), "--device", "cpu"]) == 0
    a, b = (pd.read_csv(tmp_path / name / "predictions.csv") for name in ("torch", "exported-run"))
    assert a["predicted"].tolist() == b["predicted"].tolist() and len(a) == len(list(images.rglob("*.png")))
    prob_cols = [c for c in a.columns if c.startswith("prob_")]
    np.testing.assert_allclose(a[prob_cols].to_numpy(), b[prob_cols].to_numpy(), atol=1e-4)
    assert a["low_confidence"].tolist() == b["low_confidence"].tolist()
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "torch" / "counts.csv"),
                                  pd.read_csv(tmp_path / "exported-run" / "counts.csv"))
    assert runs.read_json(tmp_path / "exported-run" / "summary.json")["backends"] == [backend]


def test_a_backend_that_cannot_run_the_model_is_named_with_the_ones_that_can(classifier_run, tmp_path, capsys):
    from bench.cli.export import main as export
    from bench.cli.predict import main as predict

    images = runs.read_json(classifier_run.metrics)["data_root"]
    assert predict([images, "-c", str(classifier_run.root / "best.pt"), "--backend", "onnxruntime", "--out",
                    str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "--backend onnxruntime cannot run" in err and "a best.pt (eager PyTorch), which runs on torch" in err
    assert "bench-export RUN --format" in err
    assert export([str(classifier_run.root), "--out", str(tmp_path / "exported")]) == 0
    assert predict([images, "-c", str(tmp_path / "exported"), "--backend", "torch", "--out", str(tmp_path / "b")]) == 2
    assert "it is an ONNX export, which runs on onnxruntime or openvino" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_backend_speed_table_has_every_backend_at_batch_1_and_32_and_the_detector(tmp_path):
    """bench-benchmark --task export on a tiny classifier and a small detector: a row per batch size, every
    installed backend measured, the exported networks giving PyTorch's outputs (the speeds themselves are
    for the table, not for a test)."""
    import pandas as pd

    from bench.cli.benchmark import main as benchmark

    assert benchmark(["--task", "export", "--models", "simple_cnn", "--image-size", "16", "--ceiling-window", "0.05",
                      "--field-size", "64", "--fields", "1", "--out", str(tmp_path), "--name", "t"]) == 0
    table = pd.read_csv(tmp_path / "t.csv")
    assert table["kind"].tolist() == ["classifier", "classifier", "detector"]
    assert table["batch"].tolist() == [1, 32, 1]
    backends = ["torch", "torchscript", "onnxruntime"] + (["openvino"] if _has("openvino") else [])
    classifier = table[table["kind"] == "classifier"]
    assert (classifier[[f"{b}_per_s" for b in backends]] > 0).all().all()
    assert (classifier[[f"{b}_max_abs_diff" for b in backends[1:]]] < 1e-4).all().all()
    detector = table[table["kind"] == "detector"].iloc[0]
    assert all(detector[f"{b}_per_s"] > 0 for b in backends if b != "torchscript")


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_the_model_card_carries_the_runs_own_numbers(classifier_run, tmp_path):
    from bench.deploy import export_run

    export_run(classifier_run.root, tmp_path / "exported")
    card = (tmp_path / "exported" / "MODEL_CARD.md").read_text()
    m = runs.read_json(classifier_run.metrics)
    row = (f"| test | {100 * m['test']['accuracy']:.2f} % | {100 * m['test']['balanced_accuracy']:.2f} % | "
           f"{100 * m['test']['macro']['f1']:.2f} % |")
    assert row in card
    assert f"Temperature fitted on validation: {m['calibration']['temperature']:.4f}" in card
    assert f"config hash {m['config_hash']}" in card and ", ".join(m["classes"]) in card
    assert "Not evaluated on any other lab's images" in card
    import pandas as pd

    manifest = pd.read_csv(classifier_run.root.parents[2] / "manifest.csv")
    train = manifest[manifest["split"] == "train"]["label"].value_counts()
    assert ("Training images per class (the experiment's manifest.csv): "
            + ", ".join(f"{c} {train[c]}" for c in m["classes"]) + ".") in card
    assert (tmp_path / "exported" / "config.yaml").read_text() == (classifier_run.root / "config.yaml").read_text()
    # The card's command composes the run's own config again: the identity hash training wrote in metrics.json.
    assert "bench-train --config-dir THIS_FOLDER --config-name reproduce" in card
    from hydra import compose, initialize_config_dir

    from bench.config import run_identity
    from bench.config.compose import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(tmp_path / "exported"), version_base="1.3"):
        cfg = compose(config_name="reproduce")
    assert run_identity(cfg)[1] == m["config_hash"]


def test_an_exported_ensemble_votes_as_the_ensemble_does(classifier_run_copy, make_cfg, tmp_path):
    """Two members by majority vote (ties between them are frequent: one vote each): bench-predict on the
    exported ensemble gives the ensemble's class for every image, and the same counts."""
    import pandas as pd

    from bench.cli.ensemble import main as ensemble
    from bench.cli.export import main as export
    from bench.cli.predict import main as predict
    from bench.training import run_training
    from pathlib import Path

    exp = classifier_run_copy.root.parents[2]
    second = run_training(make_cfg("trainer.epochs=1", "trainer.max_batches=2", "experiment_name=cells",
                                   f"paths.results_dir={exp.parent}", "seed=1"))
    assert second["status"] == "completed", second
    assert ensemble([str(exp), "k=2", "method=majority"]) == 0
    ens = exp / "ensembles" / "majority-k2"
    assert export([str(ens), "--out", str(tmp_path / "exported")]) == 0
    contract = json.loads((tmp_path / "exported" / "ensemble.json").read_text())
    assert contract["voting"] == "hard" and len(contract["members"]) == 2
    images = Path(runs.read_json(classifier_run_copy.metrics)["data_root"])
    for name, folder in (("torch", ens), ("onnx", tmp_path / "exported")):
        assert predict([str(images), "--ensemble", str(folder), "--out", str(tmp_path / name), "--device", "cpu"]) == 0
    a, b = (pd.read_csv(tmp_path / name / "predictions.csv") for name in ("torch", "onnx"))
    assert a["predicted"].tolist() == b["predicted"].tolist()
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "torch" / "counts.csv"), pd.read_csv(tmp_path / "onnx" / "counts.csv"))
    # Known answers for the ties: where the two members vote for different classes (one vote each), the
    # documented rule gives the class with the larger probability sum of the two; computed here from each
    # member's own probabilities, not by bench.ensemble.voting.
    members = [tmp_path / "exported" / m for m in contract["members"]]
    probs = []
    for i, member in enumerate(members):
        assert predict([str(images), "-c", str(member), "--out", str(tmp_path / f"m{i}"), "--device", "cpu"]) == 0
        table = pd.read_csv(tmp_path / f"m{i}" / "predictions.csv")
        assert table["path"].tolist() == b["path"].tolist()
        probs.append(table[[c for c in table.columns if c.startswith("prob_")]].to_numpy())
    classes = [c.removeprefix("prob_") for c in pd.read_csv(tmp_path / "m0" / "predictions.csv").columns
               if c.startswith("prob_")]
    votes = [p.argmax(1) for p in probs]
    tied = np.flatnonzero(votes[0] != votes[1])
    assert len(tied) >= 1, "no image where the two members disagree: the tie rule is not exercised"
    total = probs[0] + probs[1]
    for i in tied:
        a_cls, b_cls = votes[0][i], votes[1][i]
        expected = a_cls if total[i, a_cls] >= total[i, b_cls] else b_cls
        assert b["predicted"].iloc[i] == classes[expected], (i, total[i, a_cls], total[i, b_cls])


def test_the_threads_signal_stack_is_put_back_after_a_library_swaps_it():
    """OpenVINO's compile_model swaps the calling thread's alternate signal stack for one it later unmaps; the
    next signal Python handled (Ctrl-C, Slurm's SIGUSR2) then ended the process with SIGSEGV (the suite crashed
    so, in a training test after the chain ran on OpenVINO). bench's runtimes compile inside
    kept_signal_stack; here a swap like OpenVINO's is made by hand inside it, and libc's sigaltstack must
    read as before afterwards."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "sigaltstack"):
        pytest.skip("no sigaltstack in this libc")
    from bench.predict.runtimes import kept_signal_stack

    class Stack(ctypes.Structure):
        _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

    def current():
        s = Stack()
        assert libc.sigaltstack(None, ctypes.byref(s)) == 0
        return s.ss_sp, s.ss_flags, s.ss_size

    before = current()
    other = ctypes.create_string_buffer(65536)
    with kept_signal_stack():
        swapped = Stack(ctypes.cast(other, ctypes.c_void_p).value, 0, 65536)
        assert libc.sigaltstack(ctypes.byref(swapped), None) == 0
        assert current()[0] == swapped.ss_sp
    assert current() == before
