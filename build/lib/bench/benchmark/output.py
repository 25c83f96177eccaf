"""The outputs: ``<name>.csv`` (with the ``SWEEP`` row), ``<name>.json`` and the printed table."""

from __future__ import annotations

import math
from pathlib import Path

from .common import COLUMNS, SWEEP_COLUMNS


def write_outputs(out_dir: Path, name: str, rows: list[dict], sweep: dict | None, env: dict):
    import pandas as pd

    from bench.runs import write_csv_atomic, write_json_atomic

    frame = pd.DataFrame(rows, columns=COLUMNS)
    for c in SWEEP_COLUMNS:
        frame[c] = float("nan")
    if sweep is not None:
        total = {c: float("nan") for c in frame.columns}
        total.update(model="SWEEP", sweep_wall_s=sweep["sweep_wall_s"], ref_total_wall_s=sweep["ref_total_wall_s"],
                     sweep_vs_ref=sweep["sweep_vs_ref"], sweep_foreign_cpu=sweep["sweep_foreign_cpu"],
                     sweep_val_acc=_mean(sweep["sweep_val_acc"].values()),
                     ref_val_acc=_mean(r["ref_val_acc"] for r in rows),
                     harness_val_acc=_mean(r["harness_val_acc"] for r in rows),
                     est_protocol_s=sum(r["est_protocol_s"] for r in rows))
        frame = pd.concat([frame, pd.DataFrame([total])], ignore_index=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out_dir / f"{name}.csv", out_dir / f"{name}.json"
    write_csv_atomic(csv_path, frame)
    write_json_atomic(json_path, {"environment": env, "sweep": sweep, "rows": rows})
    return csv_path, json_path


def _mean(values) -> float:
    vals = [float(v) for v in values if not math.isnan(float(v))]
    return sum(vals) / len(vals) if vals else float("nan")


def format_table(rows: list[dict], sweep: dict | None) -> str:
    def f(v, spec=".0f"):
        try:
            return "-" if math.isnan(v) else format(v, spec)
        except (TypeError, ValueError):
            return str(v)

    head = ["model", "ceiling", "mode", "harness", "h/ceil", "eval ceil", "h eval", "loader", "reference",
            "h/ref", "h val", "ref val", "ref wall s", "others"]
    body = [[r["model"], f(r["ceil_train_img_s"]), r["ceil_train_mode"] or "-", f(r["harness_train_img_s"]),
             f(r["harness_vs_ceiling"], ".2f"), f(r["ceil_eval_img_s"]), f(r["harness_eval_img_s"]),
             f(r["loader_img_s"]), f(r["ref_train_img_s"]), f(r["harness_vs_ref"], ".2f"),
             f(r["harness_val_acc"], ".3f"), f(r["ref_val_acc"], ".3f"), f(r["ref_wall_s"], ".1f"),
             f(r["foreign_cpu"], ".2f")] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(str(x).rjust(w) for x, w in zip(line, widths)) for line in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(0, "train/eval images/s (harness and reference: fastest epoch after the first); accuracy: "
                    "validation after the last epoch; others: CPUs used by other processes meanwhile (0 = clean)")
    if rows:
        r = rows[0]
        lines.append(f"data: decode {f(r['decode_img_s'])} img/s, cold preparation {f(r['data_prep_s'], '.2f')} s, "
                     f"loader alone {f(r['loader_img_s'])} img/s ({f(r['loader_noaug_img_s'])} without augmentation)")
    if sweep is not None:
        lines.append(f"sweep: bench-train -m {f(sweep['sweep_wall_s'], '.1f')} s vs reference loops "
                     f"{f(sweep['ref_total_wall_s'], '.1f')} s: ratio {f(sweep['sweep_vs_ref'], '.2f')} "
                     f"(val acc {', '.join(f'{k} {v:.3f}' for k, v in sweep['sweep_val_acc'].items())}; "
                     f"others {f(sweep['sweep_foreign_cpu'], '.2f')})")
    return "\n".join(lines)
