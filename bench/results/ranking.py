"""The one ranking order of every table: by a validation number, never by test.

Ranking never looks at test numbers: choosing or ordering models by test accuracy would leak the
test set into model selection. Ties are broken by model name, then seed, so the order is
deterministic; failed and running runs have no rank and come after the ranked rows.
"""

from __future__ import annotations

import logging

import pandas as pd

from bench import runs
from bench.results.records import KIND_DETECTOR, KIND_MODEL

log = logging.getLogger("bench.leaderboard")


def rank_key(frame: pd.DataFrame) -> str:
    """The column the leaderboard ranks by: the runs' ``select_by`` (the validation number their
    best epoch was chosen by) when they all agree, else plain validation accuracy."""
    done = frame[frame["status"] == runs.STATUS_COMPLETED] if "status" in frame else frame
    keys = set(done["select_by"].dropna()) if "select_by" in done else set()
    if len(keys) == 1 and (key := keys.pop()) in done:
        return key
    if len(keys) > 1:
        log.warning("runs were selected by different trainer.select_by (%s); ranking by val_acc", sorted(keys))
    return "val_acc"


RANK_NAMES = {"val_acc": "validation accuracy", "val_balanced_acc": "validation balanced accuracy",
              "val_macro_f1": "validation macro F1", "val_map": "validation mAP"}


def ranking_text(board: pd.DataFrame) -> str:
    """``ranked by validation accuracy`` (or the rank key in words), for printed headers."""
    models = board[board["kind"].isin([KIND_MODEL, KIND_DETECTOR])] if "kind" in board else board
    return f"ranked by {RANK_NAMES[rank_key(models)]}" if len(models) else "ranked by validation accuracy"


def by_validation(frame: pd.DataFrame, key: str = "val_acc") -> pd.DataFrame:
    """The one ranking order: ``key`` (a validation number) descending, then model name, then seed
    (numeric); stable, so equal rows keep their order. Test numbers never order anything."""
    frame = frame.copy()
    frame["_seed_key"] = pd.to_numeric(frame["seed"], errors="coerce") if "seed" in frame else 0
    ordered = frame.sort_values([key, "model", "_seed_key"], ascending=[False, True, True], kind="mergesort")
    return ordered.drop(columns="_seed_key").reset_index(drop=True)


def _rank_rows(frame: pd.DataFrame, off_main: pd.Series | None = None) -> pd.DataFrame:
    """Order: ranked runs by the rank key (:func:`rank_key`, desc), then model, seed; unranked runs
    (not completed, or trained on another class set: ``off_main``) after them."""
    key = rank_key(frame)
    rankable = (frame["status"] == runs.STATUS_COMPLETED) & frame[key].notna()
    if off_main is not None:
        rankable &= ~off_main
    ranked = by_validation(frame[rankable], key)
    ranked["rank"] = range(1, len(ranked) + 1)
    rest = frame[~rankable].copy()
    rest["_seed_key"] = pd.to_numeric(rest["seed"], errors="coerce")
    rest = rest.sort_values(["model", "_seed_key"], kind="mergesort").drop(columns="_seed_key")
    rest["rank"] = None
    parts = [p for p in (ranked, rest) if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else frame
