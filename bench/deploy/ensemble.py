"""An ensemble folder (bench-ensemble) exported: each member as its own checked export under
``members/``, ``members.csv`` naming them in rank order with their weights, and the ensemble's
metrics.json (its voting and validation threshold), so ``bench-predict --ensemble OUT`` votes as the
ensemble does, with bench.ensemble.voting's tie rules. ``ensemble.json`` states the vote for other programs."""

from __future__ import annotations

import shutil
from pathlib import Path

from bench import runs
from bench.deploy.classifier import TOLERANCE, export_run
from bench.deploy.folders import check_new_folder, staged

TIE_RULES = ("bench.ensemble.voting. Hard: most (weighted) votes, then the largest (weighted) "
             "probability sum, then the class of the best-ranked member voting for a tied class, "
             "then the lowest class index. Soft: the largest (weighted) mean probability, then "
             "more votes, then the best-ranked member's vote, then the lowest class index. "
             "Scores within 1e-9 are tied.")


def export_ensemble(ens_dir, out_dir, *, fmt: str = "onnx", images: list[Path] | None = None,
                    tolerance: float = TOLERANCE) -> dict:
    import pandas as pd

    from bench.ensemble.folders import MEMBERS_CSV
    from bench.predict.checkpoints import ensemble_checkpoints

    ens_dir, out_dir = Path(ens_dir), Path(out_dir)
    check_new_folder(out_dir)
    paths, weights, voting = ensemble_checkpoints(ens_dir)
    with staged(out_dir) as work:
        members = pd.read_csv(ens_dir / MEMBERS_CSV)
        folders = []
        for i, path in enumerate(paths):
            folder = work / "members" / f"{i + 1}-{path.parent.parent.name}-{path.parent.name}"
            export_run(path, folder, fmt=fmt, images=images, tolerance=tolerance)
            folders.append(folder)
        final = [out_dir / f.relative_to(work) for f in folders]
        members["checkpoint"] = [str(f) for f in final]  # absolute: the folder is moved into place below
        runs.write_csv_atomic(work / MEMBERS_CSV, members)
        shutil.copy2(ens_dir / "metrics.json", work / "metrics.json")
        contract = {"kind": "ensemble", "format": fmt, "voting": voting, "weights": weights,
                    "members": [str(f.relative_to(out_dir)) for f in final], "source": str(ens_dir),
                    "tie_rules": TIE_RULES}
        runs.write_json_atomic(work / "ensemble.json", contract)
    return contract
