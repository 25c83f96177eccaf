"""What one ``bench-tune`` command line asks for, worked out once: the studies (models, seeds, the parsed
search space, ``tune.*``, the experiment folder) and, for ``--final``, the retrains of each best
configuration. The command line (bench.cli.tune) only prints what these return."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.tune.study import TUNED_DIR


class TuneJobError(ValueError):
    """A command line bench-tune cannot run: the message names the option and the fix."""


@dataclass
class TuneJob:
    base: list[str]  # the overrides every trial and retrain shares (absolute paths, the first seed)
    models: list[str]
    seeds: list[str]
    space: dict
    exp_name: str
    exp_dir: Path
    tune: dict
    select_by: str

    @property
    def tuned_name(self) -> str:
        return f"{self.exp_name}/{TUNED_DIR}"

    @property
    def tuned_dir(self) -> Path:
        return self.exp_dir / TUNED_DIR


def plan_job(overrides: list[str]) -> TuneJob:
    """The studies of ``overrides`` (launcher options already taken out): only model= and seed= may sweep."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from bench import runs
    from bench.config import compose_config
    from bench.tune.space import SpaceError, parse_space

    parsed = OverridesParser.create().parse_overrides(overrides)
    swept = {o.key_or_group: [str(v) for v in o.sweep_string_iterator()] for o in parsed if o.is_sweep_override()}
    base = [o.input_line for o in parsed if not o.is_sweep_override()]
    cfg = compose_config(base)
    models = swept.pop("model", None) or [cfg.model.name]
    seeds = swept.pop("seed", None) or [str(cfg.seed)]
    if swept:
        raise TuneJobError(f"only model= and seed= may take several values here (got {', '.join(swept)}); the search "
                           "space is tune.space.")
    try:
        space = parse_space(OmegaConf.to_container(cfg.tune.space) if cfg.tune.space is not None else None)
    except SpaceError as exc:
        raise TuneJobError(str(exc)) from exc
    results = Path(cfg.paths.results_dir).resolve()
    # Absolute paths: a worker on a compute node may start in another folder.
    base = [*base, f"paths.results_dir={results}", f"seed={seeds[0]}"]
    if cfg.paths.cache_dir:
        base.append(f"paths.cache_dir={Path(cfg.paths.cache_dir).expanduser().resolve()}")
    return TuneJob(base, models, seeds, space, cfg.experiment_name, runs.experiment_dir(results, cfg.experiment_name),
                   OmegaConf.to_container(cfg.tune, resolve=True), cfg.trainer.select_by)


def final_tasks(job: TuneJob, best: dict[str, dict]) -> list[tuple[str, int, list[str]]]:
    """``(model, seed, overrides)`` of each retrain: every best configuration with every seed, as
    ``<experiment>/tuned``; models without a completed trial are left out."""
    tasks = []
    for model, record in best.items():
        if "params" not in record:
            continue
        for seed in job.seeds:
            overrides = [*[o for o in job.base if not o.startswith("seed=")], f"model={model}", f"seed={seed}",
                         *(f"{k}={v}" for k, v in record["params"].items()), f"experiment_name={job.tuned_name}"]
            tasks.append((model, int(seed), overrides))
    return tasks
