"""``bench-tune``: one Optuna study per architecture, trials as run folders, then ``--final`` retrains each
best configuration as ordinary runs (bench.tune). The command line only: parsing, calling, printing."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    from bench.cli.commands import parser

    args = parser("bench-tune").parse_args(argv)
    try:
        import optuna  # noqa: F401
    except ImportError:
        print("bench-tune: optuna is not installed; pip install -e '.[tune]'.", file=sys.stderr)
        return 2
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from bench import runs
    from bench.config import compose_config
    from bench.tune import SpaceError, best_trials, parse_space, run_studies

    overrides = [o for o in args.overrides if o not in ("-m", "--multirun")]
    parsed = OverridesParser.create().parse_overrides(overrides)
    swept = {o.key_or_group: [str(v) for v in o.sweep_string_iterator()] for o in parsed if o.is_sweep_override()}
    base = [o.input_line for o in parsed if not o.is_sweep_override()]
    cfg = compose_config(base)
    models = swept.pop("model", None) or [cfg.model.name]
    seeds = swept.pop("seed", None) or [str(cfg.seed)]
    if swept:
        print(f"bench-tune: only model= and seed= may take several values here (got {', '.join(swept)}); the search "
              "space is tune.space.", file=sys.stderr)
        return 2
    try:
        space = parse_space(OmegaConf.to_container(cfg.tune.space) if cfg.tune.space is not None else None)
    except SpaceError as exc:
        print(f"bench-tune: {exc}", file=sys.stderr)
        return 2
    tune = OmegaConf.to_container(cfg.tune, resolve=True)
    exp_dir = runs.experiment_dir(Path(cfg.paths.results_dir).resolve(), cfg.experiment_name)
    select_by = cfg.trainer.select_by
    base = [*base, f"paths.results_dir={Path(cfg.paths.results_dir).resolve()}", f"seed={seeds[0]}"]
    if not args.final:
        run_studies(base, models, space, cfg.experiment_name, exp_dir, tune, select_by)
    best = best_trials(models, cfg.experiment_name, exp_dir, tune, select_by)
    for model, record in best.items():
        counts = ", ".join(f"{n} {s}" for s, n in sorted(record["trials"].items()))
        if record.get("best") is None and "params" not in record:
            print(f"{model}: no completed trial ({counts})")
            continue
        print(f"{model}: best {select_by} {record['value']:.4f} (trial {record['trial']}): "
              + " ".join(f"{k}={v}" for k, v in record["params"].items()) + f"   [{counts}]")
    if args.final:
        return _final(base, best, seeds, cfg.experiment_name)
    import shlex

    print(f"next: bench-tune --final {' '.join(map(shlex.quote, args.overrides))}   (retrains each best configuration as "
          f"{cfg.experiment_name}/tuned)")
    return 0


def _final(base: list[str], best: dict, seeds: list[str], exp_name: str) -> int:
    from bench.config import compose_config
    from bench.training import run_training

    failed = 0
    for model, record in best.items():
        if "params" not in record:
            continue
        for seed in seeds:
            cfg = compose_config([*[o for o in base if not o.startswith("seed=")], f"model={model}", f"seed={seed}",
                                  *(f"{k}={v}" for k, v in record["params"].items()),
                                  f"experiment_name={exp_name}/tuned"])
            out = run_training(cfg)
            failed += out["status"] == "failed"
            print(f"{model} seed {seed}: {out['status']} -> {out.get('run_dir')}")
    return 1 if failed else 0
