"""``bench-ensemble EXP_DIR [key=value ...]``: an ensemble of an experiment's runs (:mod:`bench.ensemble`).
The command line only: its key=value options read, the ensemble built, the result printed."""

from __future__ import annotations

import sys
import time
from typing import Any, Sequence

import pandas as pd

from bench.cli.parsers import ENSEMBLE_OPTIONS as OPTIONS  # the key=value options
from bench.ensemble.candidates import SPLITS, EnsembleError
from bench.ensemble.folders import run_ensemble
from bench.ensemble.voting import HARD, SOFT


def _parse_weights(text: str):
    text = text.strip()
    if "=" in text:
        out = {}
        for part in filter(None, (p.strip() for p in text.split(";"))):
            key, _, value = part.rpartition("=")
            out[key.strip()] = float(value)
        return out
    return [float(v) for v in text.split(",") if v.strip()]


def parse_overrides(items: Sequence[str]) -> dict:
    """``key=value`` items (Hydra-override style) into typed options; raises EnsembleError."""
    opts: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("+")
        if not sep or key not in OPTIONS:
            raise EnsembleError(
                f"{item!r} is not an option; write key=value with key one of: "
                + "; ".join(f"{k} ({d})" for k, d in OPTIONS.items()) + ".")
        try:
            if key in ("k", "top_n", "steps", "seed"):
                opts[key] = None if value.lower() in ("null", "none", "") and key == "top_n" else int(value)
            elif key == "weights":
                opts[key] = None if value.lower() in ("null", "none", "val_acc", "") else _parse_weights(value)
            elif key == "calibrated":
                if value.lower() not in ("true", "false"):
                    raise ValueError("calibrated must be true or false")
                opts[key] = value.lower() == "true"
            elif key == "voting":
                if value not in (HARD, SOFT):
                    raise ValueError("voting must be hard or soft")
                opts[key] = value
            else:
                opts[key] = value
        except ValueError as exc:
            raise EnsembleError(f"could not read {item!r}: {exc}.") from exc
    if "name" in opts and (not opts["name"] or "/" in opts["name"] or opts["name"].startswith(".")):
        raise EnsembleError(f"name={opts['name']!r} must be a plain folder name (no '/', not hidden).")
    return opts


def format_members(members: pd.DataFrame) -> str:
    cols = [c for c in ("rank", "member", "val_acc", "test_acc", "weight") if c in members.columns]
    cells = [[str(c) for c in cols]] + [[_fmt(r[c], c) for c in cols] for r in members.to_dict("records")]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) if c == "member" else v.rjust(w) for v, w, c in zip(row, widths, cols)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value, col: str) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if col != "rank" else str(int(value))
    return str(value)


def main(argv: Sequence[str] | None = None) -> int:
    from bench.cli.commands import parser

    args = parser("bench-ensemble").parse_args(argv)
    start = time.perf_counter()
    try:
        opts = parse_overrides(args.overrides)
        if not (args.exp_dir / "runs").is_dir():
            raise EnsembleError(
                f"{args.exp_dir} has no runs/ folder. Pass an experiment folder written by bench-train "
                "(results/<experiment>, containing runs/<model>/seed<seed>/).")
        method = opts.pop("method", "majority")
        k = opts.pop("k", 4)
        result = run_ensemble(args.exp_dir, method=method, k=k, **opts)
    except EnsembleError as exc:
        print(f"bench-ensemble: {exc}", file=sys.stderr)
        return 2
    m = result.metrics
    print(f"{result.name}: {m['estimator']} ({m['voting']} voting), {len(result.members)} member(s) "
          f"chosen on validation from {m['n_candidates']} candidate(s)")
    print(format_members(result.members))
    sel = m["selection"]
    if sel.get("tie_resolution") not in (None, "none needed"):
        print(f"tie at place k (val acc {sel['kth_val_acc']:.4f}) among {', '.join(sel['tied_at_kth'])}: "
              f"took {', '.join(sel['chosen_from_tie'])} ({sel['tie_resolution']})")
    print()
    print(f"{'split':<6}{'accuracy':>10}{'macro_f1':>10}{'macro_sens':>12}{'macro_spec':>12}")
    for split in SPLITS:
        s = m[split]
        print(f"{split:<6}{s['accuracy']:>10.4f}{s['macro']['f1']:>10.4f}"
              f"{s['macro']['sensitivity']:>12.4f}{s['macro']['specificity']:>12.4f}")
    print(f"\nwrote {result.out_dir} and a leaderboard row ({time.perf_counter() - start:.2f} s)")
    return 0



if __name__ == "__main__":
    sys.exit(main())
