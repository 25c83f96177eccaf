"""``MODEL_CARD.md`` beside an export: what the model was trained on, how, how well (with intervals), how far
its confidence can be trusted, where it was and was not tested, and how to make it again. Every number is
read from the run folder (metrics.json, predictions_test.csv, external/*/metrics.json), none computed anew
except the test accuracy's bootstrap interval (bench.metrics.statistics, on the saved predictions).
"""

from __future__ import annotations

from pathlib import Path

from bench import runs
from bench.runs import files as run_files


def _num(x) -> str:
    return "-" if x is None else f"{float(x):.4f}"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * float(x):.2f} %"


def model_card(owner: Path, contract: dict) -> str:
    m = runs.read_json(owner / "metrics.json")
    classes = list(m.get("classes") or contract["classes"])
    lines = [f"# Model card: {m.get('model')} (seed {m.get('seed')}, experiment {m.get('experiment')})", "",
             f"Exported from `{owner}` by bench-export ({contract['format']}"
             + (f", opset {contract['opset']}" if contract.get("opset") else "")
             + f"; runs on {' or '.join(contract.get('backends') or ['-'])}); the preprocessing contract is "
             "model.json.", ""]
    lines += ["## Data", "",
              f"- Images: `{m.get('data_root')}`; classes ({len(classes)}): {', '.join(classes)}.",
              *_training_counts(owner, classes),
              f"- Validation images per class: {_support(m.get('val'), classes)}; test: {_support(m.get('test'), classes)}.",
              f"- Input: {m.get('input_geometry') or contract['input_size']} px"
              + (f", stain-normalised ({contract['stain']['method']}, target fitted on training images)"
                 if contract.get("stain") else "") + f"; mean {contract['mean']}, std {contract['std']}.", ""]
    deviations = m.get("protocol_deviations")
    lines += ["## Recipe", "",
              f"- Compared with: {m.get('recipe') or 'no published recipe'}; "
              + ("follows it." if deviations == [] else f"departs from it in: {'; '.join(deviations or ['-'])}."),
              f"- Weights: {m.get('weights')}; {m.get('epochs')} epochs, best epoch {m.get('best_epoch')} by "
              f"{m.get('select_by')} on validation.", ""]
    lines += ["## Results", "", "| split | accuracy | balanced accuracy | macro F1 |", "|---|---:|---:|---:|"]
    for split in ("val", "test"):
        s = m.get(split) or {}
        lines.append(f"| {split} | {_pct(s.get('accuracy'))} | {_pct(s.get('balanced_accuracy'))} | "
                     f"{_pct((s.get('macro') or {}).get('f1'))} |")
    lines += ["", _interval(owner, classes)]
    lines += _external(owner) + _confidence(m) + _limits(m, classes, owner)
    lines += ["", "## Reproduce", "",
              "`config.yaml` beside this card is the run's whole composed config, and `reproduce.yaml` the same "
              "values under bench's schema: on the same images,", "",
              "    bench-train --config-dir THIS_FOLDER --config-name reproduce paths.results_dir=DIR", "",
              f"trains it again (the split is `data.split_seed`'s). The run's identity is config hash "
              f"{m.get('config_hash')}: bench-train prints it and writes it in status.json, so any changed value "
              f"shows. This run read its images from `{m.get('data_root')}`; where they are elsewhere, add "
              "`data.root=...`, and the hash then differs by that path alone.", ""]
    return "\n".join(lines)


def _training_counts(owner: Path, classes) -> list[str]:
    """Training images per class, from the experiment's manifest (results/<exp>/manifest.csv: the split)."""
    import pandas as pd

    try:
        manifest = pd.read_csv(Path(owner).parents[2] / "manifest.csv", dtype=str, keep_default_na=False)
        train = manifest.loc[manifest["split"] == "train", "label"].value_counts()
    except (OSError, ValueError, KeyError, IndexError):
        return []
    if not set(train.index) <= set(classes):  # folder names mapped to classes (data.class_map): not counted here
        return []
    return [f"- Training images per class (the experiment's manifest.csv): "
            f"{', '.join(f'{c} {int(train.get(c, 0))}' for c in classes)}."]


def _support(split: dict | None, classes) -> str:
    per = (split or {}).get("per_class") or {}
    return ", ".join(f"{c} {per.get(c, {}).get('support', 0)}" for c in classes)


def _interval(owner: Path, classes) -> str:
    from bench.metrics import statistics as stats

    try:
        _, labels, predicted, _ = run_files.read_predictions(owner / "predictions_test.csv", classes)
    except (OSError, ValueError, run_files.PredictionsError):
        return "No saved test predictions: no interval."
    low, high = stats.bootstrap_accuracy_ci(labels == predicted)
    return (f"Test accuracy 95 % bootstrap interval ({stats.DEFAULT_RESAMPLES} resamples of the {len(labels)} test "
            f"images): {_pct(low)} to {_pct(high)}.")


def _external(owner: Path) -> list[str]:
    found = sorted(Path(owner).glob("external/*/metrics.json"))
    if not found:
        return ["", "## Other labs", "", "Not evaluated on any other lab's images: how it does on yours is unknown "
                "(bench-evaluate RUN DATA measures it)."]
    lines = ["", "## Other labs (bench-evaluate)", "", "| set | images | accuracy | balanced accuracy |", "|---|---:|---:|---:|"]
    for path in found:
        e = runs.read_json(path)
        lines.append(f"| {e.get('name') or path.parent.name} | {e.get('n')} | {_pct(e.get('accuracy'))} | "
                     f"{_pct(e.get('balanced_accuracy'))} |")
    return lines


def _confidence(m: dict) -> list[str]:
    cal = m.get("calibration")
    if not cal:
        return []
    test = cal.get("test") or {}
    ref = cal.get("referral") or {}
    return ["", "## Confidence", "",
            f"- Temperature fitted on validation: {_num(cal.get('temperature'))}; test ECE {_pct(test.get('ece'))} raw, "
            f"{_pct((test.get('calibrated') or {}).get('ece'))} after it.",
            f"- Referral: cells below confidence {_num(ref.get('threshold'))} go to a person ({ref.get('rule')}); on test "
            f"that refers {_pct((test.get('referral') or {}).get('referred_share'))} of cells, with "
            f"{_pct((test.get('referral') or {}).get('acc_kept'))} accuracy on the rest."]


def _limits(m: dict, classes, owner: Path) -> list[str]:
    labs = sorted(p.parent.name for p in Path(owner).glob("external/*/metrics.json"))
    return ["", "## Intended use and limits", "",
            "- A research benchmark model for single-cell images of peripheral blood; not a medical device.",
            f"- It knows only these classes: {', '.join(classes)}; any other cell is called one of them.",
            "- Tested on " + (f"its own lab's held-out images and on {', '.join(labs)}" if labs
                              else "its own lab's held-out images only") + "; other stains, cameras and scanners may "
            "lower accuracy sharply (measure with bench-evaluate before use).",
            *([f"- Warnings of the run: {' '.join(m['warnings'])}"] if m.get("warnings") else [])]
