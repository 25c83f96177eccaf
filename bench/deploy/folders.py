"""Where an export is written: a new ``--out`` folder only, filled in a staged folder beside it and moved
into place when every check has passed, so a failed export leaves nothing half-written."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path


class ExportError(ValueError):
    """An export that cannot be made or did not pass its check: the message says which and why."""


def check_new_folder(out_dir: Path) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ExportError(f"--out {out_dir} exists and is not empty; choose a new folder (nothing is overwritten).")


@contextlib.contextmanager
def staged(out_dir: Path):
    """A temporary folder beside ``out_dir`` to write into; moved into place when the block ends without an
    error, removed otherwise: a failed export leaves nothing behind."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield work
        if out_dir.exists():
            out_dir.rmdir()
        work.chmod(0o755)  # mkdtemp's folder is private
        work.rename(out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


REPRODUCE = "reproduce.yaml"


def copy_config(owner: Path, work: Path) -> bool:
    """The run's ``config.yaml`` beside the export, and ``reproduce.yaml``: the same values under bench's
    schema, so ``bench-train --config-dir EXPORT --config-name reproduce`` composes the run's config again
    (the same config hash) on any machine with bench installed. False when the run left no config."""
    source = Path(owner) / "config.yaml"
    if not source.is_file():
        return False
    shutil.copy2(source, work / "config.yaml")
    text = source.read_text()
    (work / REPRODUCE).write_text("# bench-train --config-dir THIS_FOLDER --config-name reproduce [paths.results_dir=DIR]\n"
                                  "# retrains the exported run: its config.yaml, typed by bench's schema.\n"
                                  "defaults:\n  - bench_schema\n  - _self_\n\n" + text)
    return True
