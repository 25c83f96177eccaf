"""``bench-evaluate results/<experiment> DATA``: every completed run and ensemble of an experiment on
one external test set, in one command; and the presets of known public sets (``--set NAME``).

Each run and ensemble is evaluated as ``bench-evaluate RUN DATA`` would (:mod:`.external`); one
already evaluated on the same files (the same fingerprint: paths, sizes, times, mapping) with the
same checkpoints is skipped, so adding a model to the experiment and running the command again
evaluates only the new one. The leaderboard is refreshed once at the end.

A preset (``bench/conf/external/<name>.yaml``) is data: the folder-to-class map of a public set as
it is distributed, its source, licence and citation, so a user who has the files types one option.
"""

from __future__ import annotations

from pathlib import Path

from bench import CONF_DIR, runs
from bench.ensemble.folders import ENSEMBLES_DIR, MEMBERS_CSV
from bench.predict.checkpoints import PredictError
from bench.predict.external import evaluate_external

PRESETS_DIR = Path(CONF_DIR) / "external"


def presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_preset(name: str) -> dict:
    """A preset as a plain dict (name, title, map, source, licence, citation); PredictError naming the
    presets when there is no such one."""
    from omegaconf import OmegaConf

    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise PredictError(f"--set {name!r} is not a preset; the presets are: {', '.join(presets())}.")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def preset_mapping(preset: dict, data_root) -> dict[str, str]:
    """The preset's folder-to-class map for the folders this copy of the set has (a user may hold a
    part of it, e.g. Raabin's Test-A); PredictError naming the expected folders when it has none."""
    root = Path(data_root)
    present = {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()
    mapping = {folder: cls for folder, cls in preset["map"].items() if folder in present}
    if not mapping:
        raise PredictError(f"{data_root} has none of the folders of the {preset['name']} preset "
                           f"({', '.join(preset['map'])}); point at the folder that holds them, or use --map.")
    return mapping


def is_experiment(folder) -> bool:
    """An experiment folder (runs/ inside), not a run or an ensemble folder."""
    folder = Path(folder)
    return (folder / "runs").is_dir() and not (folder / MEMBERS_CSV).is_file()


def evaluation_sources(exp_dir) -> list[Path]:
    """The completed runs (with best.pt) and the ensembles of an experiment, in sorted order."""
    exp_dir = Path(exp_dir)
    found = [rd.root for rd in runs.iter_run_dirs(exp_dir)
             if (rd.read_status() or {}).get("status") == runs.STATUS_COMPLETED and rd.best_ckpt.is_file()]
    found += sorted(p.parent for p in (exp_dir / ENSEMBLES_DIR).glob(f"*/{MEMBERS_CSV}")
                    if (p.parent / "metrics.json").is_file())
    return found


def evaluate_experiment(exp_dir, data_root, *, mapping: dict[str, str] | None = None, name: str | None = None,
                        batch_size: int = 64, device="cpu", progress: bool = True) -> list[dict]:
    """Every completed run and ensemble of ``exp_dir`` on ``data_root``; returns one result per source
    (its external metrics, ``skipped`` when done before on the same files, or ``error``)."""
    from tqdm.auto import tqdm

    from bench.results.leaderboard import refresh_leaderboard

    sources = evaluation_sources(exp_dir)
    if not sources:
        raise PredictError(f"{exp_dir} has no completed run or ensemble to evaluate; train some first.")
    results = []
    for source in tqdm(sources, desc=f"external set {name or Path(data_root).name}", unit="model",
                       disable=not progress):
        try:
            results.append(evaluate_external(source, data_root, mapping=mapping, name=name, batch_size=batch_size,
                                             device=device, refresh=False, skip_same=True))
        except PredictError as exc:  # one model's problem (e.g. other classes) is its row, not the end
            results.append({"source": str(source), "error": str(exc)})
    refresh_leaderboard(exp_dir)
    return results
