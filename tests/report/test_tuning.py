"""The report's tuning section (bench.report.tuning) on a hand-made experiment: default runs, tuned
retrains, best.json files and a real Optuna journal written here with Optuna itself. Every expected number
is worked out by hand below (and Kendall's tau also with scipy), never taken from the code under test."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from scipy.stats import kendalltau

from bench import runs
from bench.report import build_report, load_results
from bench.report.tuning import ranking_agreement, trial_histories, tuning_table

from tests.helpers import fake_run

optuna = pytest.importorskip("optuna", reason="optuna is not installed (pip install -e '.[tune]')")

N = 20  # images per split: accuracy k/20
# Correct images out of 20: (val, test) per model, default recipe and tuned.
DEFAULT = {"net_a": (14, 13), "net_b": (16, 15), "net_c": (12, 11)}
TUNED = {"net_a": (18, 19), "net_b": (15, 14), "net_c": (17, 16)}
# By hand: default ranks by val b (16) > a (14) > c (12); tuned a (18) > c (17) > b (15).
RANKS = {"net_a": (2, 1), "net_b": (1, 3), "net_c": (3, 2)}
# Pairs: (a, b) default a<b, tuned a>b: discordant; (a, c) a>c both: concordant; (b, c) b>c, b<c: discordant.
# tau = (1 concordant - 2 discordant) / 3 pairs; exact p for n = 3: every permutation is at least as far
# from 0 (inversions 0..3 give tau 1, 1/3, -1/3, -1), so p = 1.
TAU, P = -1 / 3, 1.0
# The journal of net_a: trial 0 complete at 0.5, trial 1 pruned after reporting 0.1, trial 2 complete at 0.9.
HISTORY_A = [(0, "COMPLETE", 0.5), (1, "PRUNED", 0.1), (2, "COMPLETE", 0.9)]


def _run(exp, model, correct: tuple[int, int]) -> None:
    y = {"val": np.arange(N) % 8, "test": np.arange(N) % 8}
    pred = {split: np.where(np.arange(N) < k, y[split], (y[split] + 1) % 8) for split, k in zip(("val", "test"), correct)}
    fake_run(exp, model, 0, y, pred)


def _journal(exp, name: str, history) -> None:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(exp / "tuning" / "journal.log")))
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    for _number, state, value in history:
        trial = study.ask()
        trial.suggest_float("optim.lr", 1e-4, 1e-1, log=True)
        if state == "PRUNED":
            trial.report(value, 1)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, value)


@pytest.fixture
def tuned_exp(tmp_path):
    exp = tmp_path / "hand"
    for model in DEFAULT:
        _run(exp, model, DEFAULT[model])
        _run(exp / "tuned", model, TUNED[model])
        runs.write_json_atomic(exp / "tuning" / model / "best.json", {
            "model": model, "study": f"hand/{model}", "select_by": "val_acc", "value": TUNED[model][0] / N,
            "params": {"optim.lr": 0.00123456, "optim.momentum": 0.9}, "trial": 2,
            "trials": {"complete": 3, "pruned": 1, "surplus (not run)": 1}})
    _journal(exp, "hand/net_a", HISTORY_A)
    return exp


@pytest.mark.known_answer
def test_the_table_holds_both_recipes_numbers_the_rank_change_and_kendalls_tau(tuned_exp):
    table = tuning_table(load_results(tuned_exp, reference_dir=None)).set_index("model")
    for model, (val, test) in DEFAULT.items():
        assert table.loc[model, ["default_val", "default_test"]].tolist() == pytest.approx([val / N, test / N])
        assert table.loc[model, ["tuned_val", "tuned_test"]].tolist() == pytest.approx([TUNED[model][0] / N,
                                                                                     TUNED[model][1] / N])
        assert (table.loc[model, "default_rank"], table.loc[model, "tuned_rank"]) == RANKS[model]
        assert table.loc[model, "rank_change"] == RANKS[model][0] - RANKS[model][1]
    agreement = ranking_agreement(table)
    assert agreement["tau"] == pytest.approx(TAU) and agreement["p"] == pytest.approx(P)
    expected = kendalltau([DEFAULT[m][0] for m in DEFAULT], [TUNED[m][0] for m in DEFAULT])
    assert (agreement["tau"], agreement["p"]) == pytest.approx((expected[0], expected[1]))


def test_the_report_section_and_the_history_read_from_the_journal(tuned_exp):
    res = load_results(tuned_exp, reference_dir=None)
    histories = trial_histories(tuned_exp, tuning_table(res), top=4)
    assert histories == {"net_a": HISTORY_A}  # net_b and net_c have no study in the journal
    text = build_report(tuned_exp, results=res).read_text()
    section = text.split("## Tuning")[1].split("\n## ")[0]
    # net_a: default val 14/20, tuned 18/20, test 13/20 -> 19/20, rank 2 -> 1.
    assert "| net_a | 70.00 | 90.00 | 65.00 | 95.00 | 2 → 1 (+1) | 3 complete, 1 pruned, 1 surplus (not run) | " \
           "2 (90.00) | optim.lr=0.00123, optim.momentum=0.9 |" in section
    assert "| net_b | 80.00 | 75.00 | 75.00 | 70.00 | 1 → 3 (-2) |" in section
    assert "-0.33 (p = 1.000, 3 models)" in section
    assert "tuning_history.png" in section and (tuned_exp / "report" / "tuning_history.png").stat().st_size > 1000


def test_the_history_is_best_so_far_with_pruned_trials_marked():
    from bench.report.tuning import plot_tuning_history

    ax = plot_tuning_history({"net_a": HISTORY_A}).axes[0]
    best, completed, pruned = ax.lines[:3]
    # Completed values 0.5 (trial 0) and 0.9 (trial 2): best so far 50 then 90 %, held to the last trial.
    assert best.get_xdata().tolist() == [0, 2, 2] and best.get_ydata().tolist() == [50, 90, 90]
    assert completed.get_xdata().tolist() == [0, 2] and pruned.get_xdata().tolist() == [1]
    assert pruned.get_ydata().tolist() == [pytest.approx(10)] and pruned.get_marker() == "x"


def test_one_model_has_no_tau_and_without_optuna_the_plot_is_skipped_with_the_reason(tmp_path, monkeypatch):
    exp = tmp_path / "one"
    _run(exp, "net_a", DEFAULT["net_a"])
    _run(exp / "tuned", "net_a", TUNED["net_a"])
    res = load_results(exp, reference_dir=None)
    assert ranking_agreement(tuning_table(res))["text"].startswith("n/a (1 model(s)")
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    section = build_report(exp, results=res).read_text().split("## Tuning")[1]
    assert "Kendall's tau between the default and the tuned ranking by validation accuracy: n/a" in section
    assert "No optimisation-history plot: optuna is not installed" in section
    assert not (exp / "report" / "tuning_history.png").exists()


def test_an_experiment_without_tuning_has_no_section(tmp_path):
    _run(tmp_path / "plain", "net_a", DEFAULT["net_a"])
    assert "## Tuning" not in build_report(tmp_path / "plain").read_text()
