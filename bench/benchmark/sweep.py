"""5. The sweep: the wall time of one ``bench-train -m`` command for all the models."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from .harness import harness_overrides


def bench_train_command() -> list[str]:
    """``bench-train`` next to this interpreter, else the same entry point through ``-c``."""
    script = Path(sys.executable).with_name("bench-train")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from bench.cli.train import cli; sys.exit(cli())"]


def run_sweep(args, models: list[str], work: Path) -> dict:
    """Wall time of one ``bench-train -m`` for all models: fresh results and cache, so start-up,
    decoding and the split are included, exactly as a user's first sweep."""
    from bench import runs
    from bench.runs import files as run_files

    results, cache = work / "sweep-results", work / "sweep-cache"
    for d in (results, cache):
        shutil.rmtree(d, ignore_errors=True)
    overrides = harness_overrides(args, ",".join(models), results_dir=results, cache_dir=cache,
                                  experiment="sweep")
    cmd = [*bench_train_command(), "-m", *overrides]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    (work / "sweep.log").write_text(" ".join(cmd) + "\n\n" + proc.stdout + "\n" + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"the sweep failed (see {work / 'sweep.log'}):\n{proc.stderr[-3000:]}")
    accs = {}
    for rd in runs.iter_run_dirs(results / "sweep"):
        m = run_files.read_metrics(rd.root)
        accs[m["model"]] = m["val"]["accuracy"]
    return {"sweep_wall_s": wall, "sweep_val_acc": accs, "command": " ".join(cmd)}
