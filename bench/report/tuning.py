"""The report's tuning section: the default recipe against the same search budget for every architecture.

Read from what ``bench-tune`` wrote, nothing trained or sampled again: ``<exp>/tuning/<model>/best.json``
(each architecture's best configuration on validation and its trials by state), ``<exp>/tuned/runs/``
(``bench-tune --final``'s retrains of those configurations) and the Optuna journal
``<exp>/tuning/journal.log`` (each trial's value, for the optimisation history). The default numbers are
the experiment's own runs. Ranks are by the validation number the runs were selected by
(``trainer.select_by``); test numbers are only reported.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench import runs
from bench.results import ranking
from bench.results import records as result_records
from bench.results import rows as leaderboard_rows
from bench.report.loading import ExperimentResults
from bench.tune import TUNED_DIR, TUNING_DIR, storage_for

log = logging.getLogger(__name__)

BEST_JSON = "best.json"
JOURNAL = "journal.log"
# The test number reported beside each validation number a leaderboard can rank by.
TEST_OF = {"val_acc": "test_acc", "val_balanced_acc": "test_balanced_acc", "val_macro_f1": "test_f1"}


def has_tuning(exp_dir) -> bool:
    """Whether bench-tune left a best configuration or a tuned retrain in this experiment."""
    exp = Path(exp_dir)
    return any((exp / TUNING_DIR).glob(f"*/{BEST_JSON}")) or (exp / TUNED_DIR / "runs").is_dir()


def best_records(exp_dir) -> dict[str, dict]:
    """Each tuned architecture's ``best.json`` (bench.tune.study.best_trials), by model name."""
    out = {}
    for path in sorted((Path(exp_dir) / TUNING_DIR).glob(f"*/{BEST_JSON}")):
        try:
            record = runs.read_json(path)
        except (OSError, ValueError) as exc:
            log.warning("skipping %s: %s", path, exc)
            continue
        out[str(record.get("model") or path.parent.name)] = record
    return out


def _board(exp_dir: Path) -> pd.DataFrame:
    return leaderboard_rows.model_rows_frame(result_records.collect_runs(exp_dir), reference={})


def _per_model(board: pd.DataFrame, key: str) -> pd.DataFrame:
    """Per model, the mean over its completed seeds of the rank key ("val") and its test number ("test")."""
    if not len(board) or key not in board:
        return pd.DataFrame(columns=["val", "test", "seeds"], dtype=float)
    done = board[(board["status"] == runs.STATUS_COMPLETED) & (board["kind"] == result_records.KIND_MODEL)].copy()
    test = TEST_OF.get(key, "test_acc")
    done["val"] = pd.to_numeric(done[key], errors="coerce")
    done["test"] = pd.to_numeric(done[test], errors="coerce") if test in done else math.nan
    grouped = done.groupby("model")
    return grouped[["val", "test"]].mean().assign(seeds=grouped.size())


def _ranks(frame: pd.DataFrame, column: str, rankable: pd.Series) -> pd.Series:
    """1 = best by ``column`` among the rankable rows (the leaderboard's order: value, then name)."""
    ordered = ranking.by_validation(frame.loc[rankable, ["model", column]], column)
    rank = {m: i for i, m in enumerate(ordered["model"], start=1)}
    return frame["model"].map(rank).astype(float)


def tuning_table(res: ExperimentResults) -> pd.DataFrame:
    """One row per tuned architecture: default and tuned validation and test numbers (means over seeds),
    their validation ranks among the models that have both, the rank change (positive: moved up with
    tuning), the trials by state and the best configuration. ``attrs['key']``: the validation number."""
    records = best_records(res.exp_dir)
    tuned_board = _board(res.exp_dir / TUNED_DIR)
    boards = [b for b in (res.board, tuned_board) if len(b) and "status" in b]
    key = ranking.rank_key(boards[0]) if boards else "val_acc"
    default, tuned = _per_model(res.board, key), _per_model(tuned_board, key)
    rows = []
    for model in sorted(set(records) | set(tuned.index)):
        record = records.get(model, {})
        rows.append({"model": model,
                     "default_val": default["val"].get(model, math.nan), "tuned_val": tuned["val"].get(model, math.nan),
                     "default_test": default["test"].get(model, math.nan), "tuned_test": tuned["test"].get(model, math.nan),
                     "default_seeds": default["seeds"].get(model, 0), "tuned_seeds": tuned["seeds"].get(model, 0),
                     "trials": record.get("trials") or {}, "params": record.get("params"),
                     "search_val": record.get("value", math.nan), "best_trial": record.get("trial"),
                     "study": record.get("study")})
    frame = pd.DataFrame(rows, columns=["model", "default_val", "tuned_val", "default_test", "tuned_test",
                                        "default_seeds", "tuned_seeds", "trials", "params", "search_val",
                                        "best_trial", "study"])
    both = frame["default_val"].notna() & frame["tuned_val"].notna()
    frame["default_rank"] = _ranks(frame, "default_val", both)
    frame["tuned_rank"] = _ranks(frame, "tuned_val", both)
    frame["rank_change"] = frame["default_rank"] - frame["tuned_rank"]
    frame = frame.sort_values(["tuned_rank", "model"], na_position="last", kind="mergesort").reset_index(drop=True)
    frame.attrs["key"] = key
    return frame


def ranking_agreement(table: pd.DataFrame) -> dict:
    """Kendall's tau (scipy, tau-b: ties counted as ties) between the default and the tuned validation
    numbers of the models that have both, with its two-sided p-value; ``text`` says it in words."""
    from scipy.stats import kendalltau

    both = table[["default_val", "tuned_val"]].dropna()
    n = len(both)
    if n < 2:
        return {"tau": math.nan, "p": math.nan, "n": n,
                "text": f"n/a ({n} model(s) with both a default and a tuned run; a ranking needs 2)"}
    tau, p = kendalltau(both["default_val"], both["tuned_val"])
    if not math.isfinite(tau):
        return {"tau": math.nan, "p": math.nan, "n": n,
                "text": "n/a (every model has the same validation number in one of the rankings)"}
    return {"tau": float(tau), "p": float(p), "n": n, "text": f"{tau:.2f} (p = {p:.3f}, {n} models)"}


# --------------------------------------------------------------------------- the optimisation history
def trial_histories(exp_dir, table: pd.DataFrame, top: int) -> dict[str, list[tuple[int, str, float]]] | str:
    """(trial number, state, value) of the complete and pruned trials of the ``top`` models by their best
    search value, read from the journal; or why they cannot be read (optuna missing, no journal)."""
    try:
        import optuna
    except ImportError:
        return "optuna is not installed here (pip install -e '.[tune]' to draw it from the journal)"
    journal = Path(exp_dir) / TUNING_DIR / JOURNAL
    if not journal.is_file():
        return (f"no journal file at {journal} (a study kept in a database, tune.storage=URL, is not read by the "
                "report)")
    storage = storage_for(None, Path(exp_dir))
    names = optuna.get_all_study_names(storage)
    chosen = table[table["search_val"].notna()].sort_values(["search_val", "model"], ascending=[False, True])
    if not len(chosen):
        return f"no completed trial in any {TUNING_DIR}/<model>/{BEST_JSON}"
    out = {}
    for row in chosen.head(top).itertuples(index=False):
        name = row.study if row.study in names else next((n for n in names if n.endswith(f"/{row.model}")), None)
        if name is None:
            continue
        study = optuna.load_study(study_name=name, storage=storage)
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        out[row.model] = [(t.number, t.state.name, t.value) for t in study.get_trials(deepcopy=False, states=states)]
    return out or f"no study of {', '.join(chosen['model'].head(top))} in {journal}"


def plot_tuning_history(histories: dict[str, list[tuple[int, str, float]]], key: str = "val_acc"):
    """Best-so-far validation value (completed trials, as Optuna's best trial) against trial number, one
    line per model; every completed trial a dot, every pruned one a cross at its last reported value."""
    from bench.report.plots import _figure

    fig = _figure(7.0, 4.5)
    ax = fig.add_subplot()
    for i, (model, trials) in enumerate(histories.items()):
        color = f"C{i % 10}"
        done = np.array([(n, v) for n, s, v in trials if s == "COMPLETE" and v is not None], float).reshape(-1, 2)
        pruned = np.array([(n, v) for n, s, v in trials if s == "PRUNED" and v is not None], float).reshape(-1, 2)
        if len(done):
            last = max(n for n, _, _ in trials)
            xs = np.append(done[:, 0], last)
            ys = 100 * np.maximum.accumulate(np.append(done[:, 1], done[:, 1].max()))
            ax.step(xs, ys, where="post", color=color, label=f"{model}: best so far")
            ax.plot(done[:, 0], 100 * done[:, 1], "o", color=color, ms=4, alpha=0.6)
        if len(pruned):
            ax.plot(pruned[:, 0], 100 * pruned[:, 1], "x", color=color, ms=6)
    ax.plot([], [], "o", color="0.4", ms=4, label="completed trial")
    ax.plot([], [], "x", color="0.4", ms=6, label="pruned trial (last reported value)")
    name = ranking.RANK_NAMES.get(key, key)
    ax.set(xlabel="trial number", ylabel=f"{name}, %", title=f"Optimisation history: {name} per trial")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


# --------------------------------------------------------------------------- markdown
def _params(params) -> str:
    if not params:
        return "-"
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _rank(row) -> str:
    if not (math.isfinite(row["default_rank"]) and math.isfinite(row["tuned_rank"])):
        return "-"
    return f"{int(row['default_rank'])} → {int(row['tuned_rank'])} ({int(row['rank_change']):+d})"


def tuning_markdown(table: pd.DataFrame, agreement: dict, figures: dict[str, str], why_no_plot: str | None) -> list[str]:
    """The section's lines: the table, Kendall's tau, the history figure (or why there is none)."""
    from bench.report.markdown import _link, _pct, md_table

    name = ranking.RANK_NAMES.get(table.attrs.get("key", "val_acc"), "validation accuracy")
    cells = pd.DataFrame({
        "model": table["model"],
        "default val %": [_pct(v) for v in table["default_val"]], "tuned val %": [_pct(v) for v in table["tuned_val"]],
        "default test %": [_pct(v) for v in table["default_test"]], "tuned test %": [_pct(v) for v in table["tuned_test"]],
        "val rank default → tuned": [_rank(r) for r in table.to_dict("records")],
        "trials": [", ".join(f"{n} {s}" for s, n in sorted(t.items())) or "-" for t in table["trials"]],
        "best trial (search val %)": [f"{int(t)} ({_pct(v)})" if t is not None and not pd.isna(t) else "-"
                                      for t, v in zip(table["best_trial"], table["search_val"])],
        "best params": [_params(p) for p in table["params"]],
    })
    seeds = max([*table["default_seeds"], *table["tuned_seeds"], 1])
    lines = ["", "## Tuning: the default recipe against the same search budget for every architecture", "",
             f"Default: this experiment's runs. Tuned: `bench-tune --final`'s retrain (`{TUNED_DIR}/`) of each "
             f"architecture's best configuration, chosen on validation by the same search for every architecture "
             f"(`{TUNING_DIR}/<model>/{BEST_JSON}`: its trials by state and best trial). val: {name}"
             + (", mean over seeds" if seeds > 1 else "") + "; ranks are by it among the models with both runs "
             "(rank change: + moved up with tuning); test numbers are reported, never used to rank or choose.",
             "", md_table(cells),
             "", f"Kendall's tau between the default and the tuned ranking by {name}: {agreement['text']}. "
             "1: the same order, −1: reversed; with a handful of models the p-value is large whatever the tau."]
    if not table["tuned_val"].notna().any():
        lines += ["", "No tuned retrain yet: `bench-tune --final` with the search's options writes it."]
    if "tuning_history" in figures:
        lines += ["", _link("tuning_history", "optimisation history of the top models")]
    elif why_no_plot:
        lines += ["", f"No optimisation-history plot: {why_no_plot}."]
    return lines
