"""bench-report: a tiny real sweep, hand-made run folders with known answers, the notebook,
published numbers only beside runs of their recipe and classes."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from bench import report, runs
from bench.cli import report as report_cli
from bench.ensemble import folders as ens
from bench.metrics import statistics as stats
from bench.training import run_training as train

from tests.helpers import PBC_ORDER as CLASSES, SMOKE_OVERRIDES, colour_folders, compose_cfg, fake_run


NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "leaderboard.ipynb"


SECTIONS = [
    "## Ranking with uncertainty",
    "## Across seeds",
    "## Class-wise test accuracy",
    "## Comparison with published results",
    "## Accuracy vs cost",
    "## Confusion matrices",
    "## Training curves",
    "## Failed and unfinished runs",
]


# --------------------------------------------------------------------------- a tiny real sweep
@pytest.fixture(scope="module")
def sweep(tmp_path_factory, cache_dir) -> Path:
    """3 tiny models (one with 2 seeds), a failed run and a majority-vote ensemble."""
    results = tmp_path_factory.mktemp("report") / "results"
    base = [*SMOKE_OVERRIDES, f"paths.results_dir={results}", f"paths.cache_dir={cache_dir}",
            "experiment_name=tiny", "trainer.epochs=2", "trainer.max_batches=2"]
    for model, seed in (("simple_cnn", 0), ("simple_cnn", 1), ("squeezenet1_1", 0), ("resnet18", 0)):
        out = train(compose_cfg(*base, f"model={model}", f"seed={seed}"))
        assert out["status"] == "completed", out
    exp = results / "tiny"
    runs.RunDir.for_run(exp, "exploding_net", 0).write_status(
        runs.STATUS_FAILED, config_hash="0", error="RuntimeError: exploding_net always fails")
    ens.run_ensemble(exp, method="majority", k=3)
    return exp


def _linked_figures(text: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)


def test_report_from_a_sweep_has_every_section(sweep, tmp_path):
    start = time.perf_counter()
    path = report.build_report(sweep, tmp_path / "out")
    elapsed = time.perf_counter() - start
    text = path.read_text()
    for section in SECTIONS:
        assert section in text, section
    assert "*How to read this:*" in text and "McNemar" in text and "one image is" in text
    assert "(best)" in text and "majority-k3" in text
    # Failed runs are listed with their error, not dropped.
    failed = text.split("## Failed and unfinished runs")[1]
    assert "exploding_net" in failed and "RuntimeError: exploding_net always fails" in failed
    # Several seeds: both simple_cnn runs are ranked, with a mean and sd row.
    assert "simple_cnn s0" in text and "simple_cnn s1" in text
    assert re.search(r"\| simple_cnn \| 2 \| [\d.]+ ± [\d.]+ \|", text)
    # Published numbers: resnet18 and squeezenet1_1 are in the paper's Table 2; Table 3 rows follow.
    assert "Gavas & Olpadkar 2021, Table 2" in text and "Gavas & Olpadkar 2021, Table 3" in text
    assert "Acevedo et al., Data in Brief 30 (2020) 105474, CC BY 4.0" in text
    assert "**" in text.split("## Class-wise test accuracy")[1].split("##")[0]  # best per column marked
    figures = _linked_figures(text)
    # Every classifier figure; the detection figures appear only when the sweep has detectors, those of
    # "How the models travel" only when external sets were evaluated (tests/report/test_generalisation.py), the
    # tuning history only when bench-tune ran (tests/report/test_tuning.py).
    assert set(figures) == {v for k, v in report.FIGURES.items() if not k.startswith(("det_", "travel_", "tuning_"))}
    for name in figures:
        assert not Path(name).is_absolute()
        assert (path.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert elapsed < 120, elapsed  # ~3 s on 2 idle cores: only a runaway (e.g. quadratic) fails


def test_statistics_match_a_direct_computation(sweep):
    res = report.load_results(sweep)
    st = report.statistics_table(res)
    assert st["kind"].tolist()[-1] == "ensemble" and st["rank"].iloc[0] == 1
    # The best is the run ranked first by validation accuracy, never by test accuracy.
    model_rows = st[st["kind"] == "model"]
    assert st["val_acc"].iloc[0] == model_rows["val_acc"].max()

    def correct_of(folder: Path) -> np.ndarray:
        frame = pd.read_csv(folder / "predictions_test.csv", dtype=str).sort_values("path")
        return (frame["label"] == frame["predicted"]).to_numpy()

    folders = [e.root for e in res.entries]
    best, ensemble = correct_of(folders[0]), correct_of(res.ensemble.root)
    for row, folder in zip(st.to_dict("records"), folders):
        c = correct_of(folder)
        assert row["test_acc"] == pytest.approx(c.mean())
        np.testing.assert_allclose([row["ci_low"], row["ci_high"]], stats.bootstrap_accuracy_ci(c))
        for ref, ref_folder, column in ((best, folders[0], "p_vs_best"),
                                        (ensemble, res.ensemble.root, "p_vs_ensemble")):
            if folder == ref_folder:  # an entry is not tested against itself
                assert pd.isna(row[column])
                continue
            b, k = int((c & ~ref).sum()), int((~c & ref).sum())
            expected = 1.0 if b + k == 0 else binomtest(b, b + k, 0.5).pvalue
            assert row[column] == pytest.approx(expected), (row["label"], column)
    assert pd.isna(st["p_vs_best"].iloc[0]) and st["distinguishable_from_best"].iloc[0] is None


def test_cli(sweep, tmp_path, capsys):
    assert report_cli.main([str(sweep), "--out", str(tmp_path / "cli"), "--resamples", "200", "--top", "2"]) == 0
    assert "report.md" in capsys.readouterr().out
    assert (tmp_path / "cli" / "report.md").exists()
    assert report_cli.main([str(tmp_path / "nowhere")]) == 2
    assert "no runs/ folder" in capsys.readouterr().err
    assert report_cli.main([str(sweep), "--out", str(tmp_path / "x"), "--ensemble", "nope"]) == 2


def test_notebook_runs_top_to_bottom(sweep, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # Committed clean: no outputs, no execution counts.
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "import bench" in code or "from bench import" in code
    monkeypatch.setenv("BENCH_RESULTS", str(sweep))
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 7  # ci, classes, 2 x cost, 2 x confusion, curves
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "tiny: 4 completed run(s)" in text and "exploding_net" in text


# --------------------------------------------------------------------------- hand-made run folders
def _flip(y: np.ndarray, wrong: np.ndarray, n_classes: int) -> np.ndarray:
    out = y.copy()
    out[wrong] = (y[wrong] + 1) % n_classes
    return out


@pytest.mark.known_answer
def test_known_answers_on_hand_made_runs(tmp_path):
    exp = tmp_path / "hand"
    rng = np.random.default_rng(0)
    n = 80
    y = {"val": rng.integers(0, 8, n), "test": rng.integers(0, 8, n)}
    first40 = np.arange(n) < 40
    # best: best on validation, right everywhere on test.
    fake_run(exp, "best_net", 0, y, {"val": y["val"], "test": y["test"]}, gflops=4.0)
    # twin: the same test predictions -> p = 1, not distinguishable.
    fake_run(exp, "twin_net", 0, y, {"val": _flip(y["val"], np.arange(n) < 2, 8), "test": y["test"]}, gflops=8.0)
    # worse: wrong on half the test images where best is right -> tiny p.
    fake_run(exp, "worse_net", 0, y, {"val": _flip(y["val"], np.arange(n) < 4, 8),
                                       "test": _flip(y["test"], first40, 8)}, gflops=1.0)
    res = report.load_results(exp, reference_dir=None)
    st = report.statistics_table(res, n_resamples=500, seed=1).set_index("model")
    assert res.best.model == "best_net"
    assert st.loc["twin_net", "p_vs_best"] == 1.0 and st.loc["twin_net", "distinguishable_from_best"] is False
    assert st.loc["worse_net", "p_vs_best"] == pytest.approx(2 * 0.5 ** 40)
    assert st.loc["worse_net", "distinguishable_from_best"] is True
    assert (st.loc["worse_net", "only_this"], st.loc["worse_net", "only_best"]) == (0, 40)
    np.testing.assert_array_equal(st.loc["worse_net", ["ci_low", "ci_high"]].to_numpy(float),
                                  stats.bootstrap_accuracy_ci(~first40, n_resamples=500, seed=1))
    assert st.loc["best_net", ["ci_low", "ci_high"]].tolist() == [1.0, 1.0]
    # Pareto front on validation: worse_net (cheapest) and best_net; twin_net is dearer and worse.
    pts = report.plots._cost_points(res, "gflops")
    assert stats.pareto_front(pts["cost"], pts["val_acc"]).tolist() == [True, False, True]
    # No reference folder and no matching names: no published rows.
    text = report.build_report(exp, results=res).read_text()
    assert "Gavas & Olpadkar 2021, Table 2)" not in text and "published (" not in text
    assert "Data: the PBC dataset (Acevedo et al." in text
    assert "## Across seeds" not in text and "None." in text.split("## Failed and unfinished runs")[1]


def test_report_with_only_failed_runs(tmp_path):
    exp = tmp_path / "broken"
    runs.RunDir.for_run(exp, "resnet18", 0).write_status(runs.STATUS_FAILED, config_hash="0", error="OSError: disk")
    runs.RunDir.for_run(exp, "vgg16", 0).write_status(runs.STATUS_RUNNING, config_hash="0")
    text = report.build_report(exp).read_text()
    assert "No completed runs yet." in text
    assert "OSError: disk" in text and "| vgg16 | 0 | running |" in text


def test_md_table_marks_the_best_per_column():
    frame = pd.DataFrame({"model": ["a", "b", "c"], "x": ["90.00", "95.00", "95.00"], "y": ["1.0", "-", "0.5"]})
    lines = report.md_table(frame, bold=["x", "y"]).splitlines()
    assert lines[1] == "|---|---:|---:|"
    assert lines[2] == "| a | 90.00 | **1.0** |"
    assert lines[3] == "| b | **95.00** | - |" and lines[4] == "| c | **95.00** | 0.5 |"


def test_thirty_runs_take_seconds(tmp_path):
    """PBC-sized: 30 runs x 2,051 test images, with an ensemble; the report takes seconds."""
    exp = tmp_path / "big"
    rng = np.random.default_rng(1)
    n_val, n_test = 400, 2051
    y = {"val": rng.integers(0, 8, n_val), "test": rng.integers(0, 8, n_test)}
    for i in range(30):
        err = 0.005 + 0.02 * rng.random()
        pred = {s: _flip(y[s], rng.random(len(y[s])) < err, 8) for s in y}
        fake_run(exp, f"net{i:02d}", 0, y, pred, gflops=float(rng.uniform(0.3, 20)),
                  train_time=float(rng.uniform(100, 5000)), epochs=25)
    ens.run_ensemble(exp, method="majority", k=4)
    start = time.perf_counter()
    path = report.build_report(exp)
    elapsed = time.perf_counter() - start
    text = path.read_text()
    assert "one image is 0.0488 percentage points" in text and "majority-k4" in text
    table = text.split("## Ranking with uncertainty")[1].split("*How to read")[0]
    assert table.count("\n| ") == 31 + 1  # header + 30 runs + 1 ensemble
    assert elapsed < 120, f"report took {elapsed:.1f} s"  # ~6 s on 2 idle cores; only a runaway fails


# --------------------------------------------------------------------------- published numbers beside ours
def _section(text: str, heading: str) -> str:
    return text.split(heading)[1].split("\n## ")[0]


def _runs_of(exp: Path, models: list[str], classes=CLASSES, **recorded) -> None:
    """Runs right on every test image (test accuracy 1), with the given recipe / departures."""
    y = {"val": np.arange(16) % len(classes), "test": np.arange(24) % len(classes)}
    for model in models:
        fake_run(exp, model, 0, y, {"val": y["val"], "test": y["test"]}, classes=classes, **recorded)


def test_published_gavas_numbers_only_beside_runs_of_its_recipe(tmp_path):
    table2 = pd.read_csv(Path(report.__file__).resolve().parents[1] / "reference" / "gavas2021_table2.csv")
    paper = table2.set_index("model").loc["resnet18", "overall"]

    # Another paper's recipe: Gavas' rows are left out, and the report says why.
    _runs_of(tmp_path / "acevedo", ["vgg16", "inception_v3"], recipe="acevedo2019_finetune",
             protocol_deviations=["trains the last 2 blocks (paper: the last four convolutional blocks)"])
    text = report.build_report(tmp_path / "acevedo").read_text()
    assert "Gavas & Olpadkar 2021, Table 2)" not in text and "published (" not in text
    assert "ours − paper" not in text and "## Comparison with published results" not in text
    assert "Published numbers:" not in text
    for block in ("## Class-wise test accuracy", "## Test accuracy and macro metrics"):
        note = _section(text, block)
        assert "**Not a replication**" in note and "follow experiment=acevedo2019_finetune" in note, note

    # Gavas' recipe with a departure: the published rows, no difference, and "not a replication" in both blocks.
    _runs_of(tmp_path / "short", ["resnet18"], recipe="gavas2021", protocol_deviations=["trainer.epochs=3 (paper: 25)"])
    text = report.build_report(tmp_path / "short").read_text()
    for block in ("## Class-wise test accuracy (as the paper's Table 2)",
                  "## Comparison with published results (as the paper's Table 3)"):
        note = _section(text, block)
        assert "**Not a replication**" in note and "resnet18: trainer.epochs=3 (paper: 25)" in note, note
    assert re.search(r"\| resnet18 \|[^\n]* \| - \|\n", _section(text, "## Class-wise test accuracy"))
    assert "Published numbers: Gavas & Olpadkar 2021" in text

    # Gavas' recipe followed: ours − paper is shown (1 - the published 0.9917).
    _runs_of(tmp_path / "follows", ["resnet18"], recipe="gavas2021", protocol_deviations=[])
    text = report.build_report(tmp_path / "follows").read_text()
    assert f"| {100 * (1 - paper):+.2f} |" in _section(text, "## Class-wise test accuracy")
    assert "Every run compared here followed the published protocol." in _section(
        text, "## Comparison with published results (as the paper's Table 3)")


def test_data_of_other_classes_gets_no_published_heading_or_source(tmp_path):
    _runs_of(tmp_path / "four", ["resnet18"], classes=["eosinophil", "lymphocyte", "monocyte", "neutrophil"],
             recipe="gavas2021", protocol_deviations=[])
    text = report.build_report(tmp_path / "four").read_text()
    assert "## Test accuracy and macro metrics" in text
    assert "as the paper's Table" not in text and "Published numbers:" not in text and "published (" not in text
    assert "so none is shown next to these" in text  # the data note says why


def test_a_runs_warnings_are_in_the_report_beside_its_numbers(tmp_path):
    warning = "the model predicts 'neutrophil' for 97% of the validation images, where it is 40% of them"
    _runs_of(tmp_path / "warned", ["resnet18"], warnings=[warning])
    _runs_of(tmp_path / "warned", ["simple_cnn"])
    text = report.build_report(tmp_path / "warned").read_text()
    section = text.split("## Warnings", 1)[1].split("\n## ", 1)[0]
    assert "1 warning(s) from 1 run(s)" in section and warning in section and "resnet18" in section
    assert "simple_cnn" not in section
    _runs_of(tmp_path / "quiet", ["simple_cnn"])
    assert "## Warnings" not in report.build_report(tmp_path / "quiet").read_text()


def _imbalanced_run(tmp_path, cache_dir, counts, *extra):
    root = colour_folders(tmp_path / "lab2", counts)
    return root, compose_cfg("trainer=cpu_smoke", "model=simple_cnn", "model.pretrained=false", "data=imagefolder",
                             f"data.root={root}", "data.image_size=16", "trainer.epochs=2", "data.decode_workers=1",
                             f"paths.results_dir={tmp_path / 'results'}", f"paths.cache_dir={cache_dir}", *extra)


@pytest.mark.own_data
def test_another_labs_classes_get_no_published_comparison(tmp_path, cache_dir):
    _, cfg = _imbalanced_run(tmp_path, cache_dir, {"Lymphocyte": 14, "Neutrophil": 30, "Platelet": 12})
    out = train(cfg)
    assert out["status"] == "completed"
    exp = Path(out["run_dir"]).parents[2]
    board = pd.read_csv(exp / "leaderboard.csv")
    assert board["paper_test_acc"].isna().all() and board["paper_diff"].isna().all()
    text = report.build_report(exp, tmp_path / "report").read_text()
    assert "Published class-wise accuracy" not in text and "ours − paper" not in text
    assert "published (Gavas" not in text
    assert "none is shown next to these" in text
    support = runs.read_json(Path(out["run_dir"]) / "metrics.json")["test"]["per_class"]
    for name, scores in support.items():
        assert f"{name} (n={scores['support']})" in text  # per-class n beside per-class numbers


@pytest.mark.own_data
def test_all_zero_columns_are_not_bold():
    from bench.report.markdown import md_table

    table = md_table(pd.DataFrame({"model": ["a", "b"], "x": ["0.00", "0.00"], "y": ["1.00", "2.00"]}),
                     bold=["x", "y"])
    assert "**0.00**" not in table and "**2.00**" in table
