"""Every console script in one light module: its summary, its arguments and its help.

The ``bench-*`` scripts point here. ``--help`` and ``--version`` are answered from this
module alone, which imports nothing heavier than ``argparse`` (about 0.1 s, where importing
torch takes seconds); anything else imports the tool and runs it. The argparse tools build
their parser here (one definition: the tool parses with the same parser its help shows),
the Hydra tools (``KEY=VALUE`` overrides) get a help page listing the config groups.

``python -m bench`` lists the tools; ``python -m bench train ...`` runs ``bench-train ...``.

A broken pipe (``bench-models | head``) ends the tool quietly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import bench

HELP_FLAGS = ("-h", "--help")


@dataclass(frozen=True)
class Command:
    name: str
    target: str  # "module:function", called with the argument list
    summary: str
    parser: Callable[[], argparse.ArgumentParser] | None = None  # argparse tools
    hydra: bool = False  # takes bench-train's KEY=VALUE overrides
    examples: tuple[str, ...] = ()


# --------------------------------------------------------------------------- CLI defaults
# The Python API's defaults (bench.stats, bench.report, bench.benchmark) are the same numbers;
# tests/test_package.py checks that they agree.
REPORT_TOP = 4
STATS_RESAMPLES = 2000
STATS_SEED = 0
STATS_CONFIDENCE = 0.95
STATS_ALPHA = 0.05
BENCHMARK_MODELS = "squeezenet1_1,mobilenet_v2,resnet18"
BENCHMARK_MODES = ("fp32", "fp32_cl", "bf16", "bf16_cl")
PREDICT_METHODS = ("majority", "soft")
ENSEMBLE_METHODS = ("majority", "soft", "weighted", "greedy", "best_subset", "paper")
ENSEMBLE_OPTIONS = {
    "k": "number of members (default 4)",
    "method": f"one of {', '.join(ENSEMBLE_METHODS)} (default majority)",
    "top_n": "pool size: best_subset searches the top N (default 8); greedy selects from the top N (default all)",
    "weights": "weighted: comma-separated numbers for the members in rank order, or "
               "member=weight pairs separated by ';' (e.g. 'resnet18/seed0=2;vgg16/seed0=1')",
    "voting": "hard or soft, for weighted, greedy and best_subset",
    "steps": "greedy: number of forward-selection steps (default 20)",
    "name": "output folder and leaderboard name (default <method>-k<k>, or greedy)",
    "seed": "paper: which seed of each of the paper's four models (default 0)",
}


def _image_size(text: str) -> int | None:
    if text in ("model", "native", "null", "0"):
        return None
    size = int(text)
    if size < 8:
        raise argparse.ArgumentTypeError(f"--image-size {size} is too small")
    return size


# --------------------------------------------------------------------------- argparse tools
def models_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench-models", description=COMMANDS["bench-models"].summary + " Any timm "
                                "model can also be used as timm/<name>.")
    p.add_argument("pattern", nargs="?", default=None,
                   help="fnmatch glob, e.g. 'resnet*'; 'timm/<glob>' searches timm's models")
    return p


def leaderboard_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench-leaderboard", description=COMMANDS["bench-leaderboard"].summary)
    p.add_argument("exp_dir", type=Path, help="experiment folder, e.g. results/<experiment>")
    p.add_argument("--max-rows", type=int, default=None, help="print at most this many rows")
    return p


def ensemble_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench-ensemble", description=COMMANDS["bench-ensemble"].summary,
        epilog="options (key=value): " + "; ".join(f"{k}: {d}" for k, d in ENSEMBLE_OPTIONS.items()))
    p.add_argument("exp_dir", type=Path, help="experiment folder, e.g. results/<experiment>")
    p.add_argument("overrides", nargs="*", help="key=value options, e.g. k=4 method=majority")
    return p


def predict_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench-predict", description=COMMANDS["bench-predict"].summary)
    p.add_argument("images_dir", type=Path, help="folder of images (searched recursively)")
    p.add_argument("--checkpoint", "-c", action="append", type=Path, default=[], metavar="PT",
                   help="a best.pt from bench-train; repeat for an ensemble (first = best ranked)")
    p.add_argument("--ensemble", type=Path, default=None, metavar="DIR",
                   help="an ensemble folder results/<exp>/ensembles/<name>: its members' best.pt")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--method", choices=sorted(PREDICT_METHODS), default=None,
                   help="combine by majority vote or mean probability (default: the ensemble's own voting; "
                        "soft for one checkpoint, majority for several)")
    p.add_argument("--batch-size", type=int, default=64, help="images (or cell crops) per forward pass")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    chain = p.add_argument_group("smear fields: detector -> cell classifier (IMAGES_DIR holds whole fields)")
    chain.add_argument("--detector", type=Path, default=None, metavar="DET",
                       help="a detector run folder (results/<exp>/runs/<detector>/seed<seed>) or its best.pt")
    chain.add_argument("--classifier", action="append", default=[], metavar="[LABEL=]CLS",
                       help="the cell classifier: a best.pt, run folder or ensemble folder; LABEL=CLS (repeatable) "
                            "types each detector label with its own classifier (e.g. Cheuque 2022's two groups)")
    chain.add_argument("--classify-labels", default=None, metavar="LABEL[,LABEL]",
                       help="detector labels whose boxes are cropped and typed (default: the labels that are "
                            "classifier classes or white-cell names such as wbc; the others are counted as detected)")
    chain.add_argument("--margin", type=float, default=0.25,
                       help="context around a box, as a fraction of its longer side on each side (default 0.25)")
    chain.add_argument("--crop-size", type=int, default=None, metavar="PX",
                       help="crop a fixed square of PX field pixels around each box instead (at least the box): "
                            "the framing of single-cell images taken at one magnification")
    chain.add_argument("--score-threshold", type=float, default=None,
                       help="keep boxes scoring at least this (default: the threshold the detector's run chose on "
                            "validation, else 0.5)")
    chain.add_argument("--truth", type=Path, default=None, metavar="ANNOTATIONS",
                       help="score the chain: a COCO .json, boxes .csv or VOC folder of these fields, labels = cell "
                            "types; writes cascade_metrics.json")
    chain.add_argument("--truth-map", default=None, metavar="TRUTH=CLASS,...",
                       help="rename the truth's labels to ours (e.g. Neutrophil=neutrophil,WBC=wbc)")
    chain.add_argument("--score-level", choices=("cell", "detector"), default="cell",
                       help="score the final cell types (default) or the detector's labels only (truth without "
                            "white-cell types)")
    chain.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench-evaluate", description=COMMANDS["bench-evaluate"].summary)
    p.add_argument("source", type=Path, help="a run folder (results/<exp>/runs/<model>/seed<seed>), its best.pt, or "
                                             "an ensemble folder (results/<exp>/ensembles/<name>)")
    p.add_argument("data_root", type=Path, help="the external test set: one sub-folder per class")
    p.add_argument("--map", default=None, metavar="FOLDER=CLASS,...",
                   help="which model class each folder is, where the names differ beyond case "
                        "(e.g. Neutrophil=neutrophil,Lympho=lymphocyte); other folders are left out and reported")
    p.add_argument("--name", default=None, help="name of the test set (default: the folder's name); leaderboard "
                                                "columns ext_<name>_acc and ext_<name>_balanced_acc")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    return p


def report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench-report", description=COMMANDS["bench-report"].summary)
    p.add_argument("exp_dir", type=Path, help="experiment folder, e.g. results/<experiment>, or a bench-predict "
                                            "--detector output folder (the chain's report, scored again)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default <exp_dir>/report)")
    p.add_argument("--top", type=int, default=REPORT_TOP,
                   help=f"models in the comparison table and the training curves (default {REPORT_TOP})")
    p.add_argument("--resamples", type=int, default=STATS_RESAMPLES,
                   help=f"bootstrap resamples (default {STATS_RESAMPLES})")
    p.add_argument("--seed", type=int, default=STATS_SEED, help=f"bootstrap seed (default {STATS_SEED})")
    p.add_argument("--confidence", type=float, default=STATS_CONFIDENCE,
                   help=f"bootstrap interval level (default {STATS_CONFIDENCE})")
    p.add_argument("--alpha", type=float, default=STATS_ALPHA,
                   help=f"significance level of the McNemar tests (default {STATS_ALPHA})")
    p.add_argument("--ensemble", default=None, help="ensemble to compare against, by name (default: the one "
                                                     "with the best validation accuracy)")
    p.add_argument("--reference", type=Path, default=None,
                   help="folder with the published tables (default: the copy shipped in the package, bench/reference)")
    p.add_argument("--no-reference", action="store_true", help="leave the published numbers out")
    return p


def compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench-compare", description=COMMANDS["bench-compare"].summary)
    p.add_argument("exp_dir", type=Path, help="folder holding the variants' experiment folders")
    p.add_argument("--variants", nargs="+", default=None,
                   help="sub-folders to compare, in column order (default: every sub-folder with runs/)")
    return p


def benchmark_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench-benchmark", description=COMMANDS["bench-benchmark"].summary,
        epilog="e.g. bench-benchmark --data ../shared/data/pbc-sample --image-size 64 --epochs 3 --name pbc64")
    p.add_argument("--data", default="synthetic", help="an imagefolder (one sub-folder per class) or 'synthetic'")
    p.add_argument("--models", default=BENCHMARK_MODELS,
                   help=f"comma-separated, or 'gavas2021' for the 27 of the paper (default {BENCHMARK_MODELS})")
    p.add_argument("--image-size", type=_image_size, default=64,
                   help="pixels, or 'model' for each model's own input size (224; 299 for inception_v3)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--name", default=None, help="output name (default: <data>-<size>px)")
    p.add_argument("--out", default="results/benchmarks")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ref-workers", type=int, default=2, help="DataLoader workers of the reference loop")
    p.add_argument("--no-reference", action="store_true", help="skip the reference loop (and so the sweep)")
    p.add_argument("--no-sweep", action="store_true", help="skip the bench-train -m timing")
    p.add_argument("--no-ceiling", action="store_true", help="skip the model-alone measurements")
    p.add_argument("--ceiling-modes", default=",".join(BENCHMARK_MODES),
                   help=f"model-alone modes to measure ({', '.join(BENCHMARK_MODES)})")
    p.add_argument("--ceiling-window", type=float, default=1.0, help="seconds per timing window (best of 3)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra bench-train override for the harness runs and the sweep, e.g. trainer.amp=true")
    p.add_argument("--task", choices=("classification", "detection"), default="classification",
                   help="detection: one detector (--models, default fasterrcnn_mobilenet_v3_large_320_fpn) alone vs "
                        "in the harness, and the smear-field chain's fields/s (bench.benchmark.detection)")
    p.add_argument("--field-size", type=int, default=256, help="--task detection: synthetic field side in pixels")
    p.add_argument("--fields", type=int, default=24, help="--task detection: fields through the chain")
    p.add_argument("--synthetic-n-per-class", type=int, default=60)
    p.add_argument("--synthetic-size", type=int, default=96)
    p.add_argument("--protocol-images", type=int, default=17092,
                   help="images of the full dataset for est_protocol_s (PBC: 17,092)")
    p.add_argument("--protocol-epochs", type=int, default=25)
    p.add_argument("--keep-work", action="store_true", help="keep the run folders and caches under <out>/<name>.work")
    return p


def overrides_parser(name: str) -> argparse.ArgumentParser:
    """The Hydra-override tools parse ``KEY=VALUE ...`` only; their help is :func:`hydra_help`."""
    p = argparse.ArgumentParser(prog=name, description=COMMANDS[name].summary, add_help=False)
    p.add_argument("overrides", nargs="*", help="bench-train overrides, e.g. experiment=gavas2021 data.root=PATH")
    return p


# --------------------------------------------------------------------------- the table
COMMANDS: dict[str, Command] = {c.name: c for c in [
    Command("bench-train", "bench.train:cli",
            "Fine-tune and evaluate image classifiers (or cell detectors on smear fields) under one Hydra "
            "config: one run, or a sweep with -m. "
            "Each run writes results/<experiment>/runs/<model>/seed<seed>/ (metrics, per-image predictions, "
            "checkpoints) and refreshes the experiment's leaderboard; finished runs are skipped, interrupted ones "
            "resume. Defaults are the published protocol (Gavas & Olpadkar 2021).",
            hydra=True, examples=(
                "bench-train experiment=quickstart                                  # the demo's first model",
                "bench-train model=resnet34 data=imagefolder data.root=/data/PBC     # your own folder",
                "bench-train -m experiment=gavas2021 data.root=/data/PBC            # all 27 models",
                "bench-train model=timm/convnext_tiny model.pretrained=false data.image_size=64",
                "bench-train experiment=detect_quickstart                           # a detector on synthetic smears",
                "bench-train --cfg job experiment=gavas2021                         # print the config")),
    Command("bench-cv", "bench.protocols.cv:main",
            "Cross-validate a model: cv.folds=K stratified k-fold or cv.repeats=R Monte Carlo splits, one run per "
            "fold, then cv_folds.csv and cv_summary.csv (mean and std). Experiments: almotairi2019 (WBCsNet, "
            "10-fold), cheuque2022_two_level (two-level classifier, 10 x 70/30).",
            hydra=True, examples=("bench-cv experiment=almotairi2019 data.root=/data/PBC",
                                  "bench-cv experiment=almotairi2019 data.root=/data/PBC cv.fold=3   # one fold")),
    Command("bench-svm", "bench.protocols.svm_features:main",
            "SVMs on frozen-CNN features (Acevedo et al. 2019): every svm.feature_models x svm.kernels in one "
            "invocation (no -m); runs, leaderboard and cached features under results/<experiment>/.",
            hydra=True, examples=("bench-svm experiment=acevedo2019_svm data.root=/data/PBC",
                                  "bench-svm experiment=acevedo2019_svm data.root=/data/PBC svm.kernels=[cubic]")),
    Command("bench-fetch-weights", "bench.preflight:fetch_main",
            "Download the pretrained weights of every model a bench-train command would use (same overrides, "
            "or bare model names) into the standard caches (torch hub, Hugging Face).",
            hydra=True, examples=("bench-fetch-weights experiment=gavas2021", "bench-fetch-weights resnet18 vgg19")),
    Command("bench-models", "bench.models.cli:main",
            "List the models bench can build: name, input size, family, source.", parser=models_parser),
    Command("bench-leaderboard", "bench.leaderboard:main",
            "Collect the runs of an experiment folder into leaderboard.csv, per_class.csv and summary.csv, and "
            "print the ranking (by validation accuracy).", parser=leaderboard_parser),
    Command("bench-ensemble", "bench.ensemble_runs:main",
            "Ensemble the completed runs of an experiment from their saved predictions: choose members on "
            "validation, vote per image, report val and test metrics, write <exp>/ensembles/<name>/ and a "
            "leaderboard row of kind 'ensemble'.", parser=ensemble_parser),
    Command("bench-predict", "bench.predict:main",
            "Classify a folder of cell images with one checkpoint or an ensemble of checkpoints; write "
            "predictions.csv, counts.csv (differential count) and unreadable.csv into --out. With --detector: whole "
            "smear fields, each cell found, cropped and typed (cells.csv, counts.csv, one picture per field; "
            "--truth scores the chain).", parser=predict_parser),
    Command("bench-evaluate", "bench.evaluate:main",
            "Evaluate a trained run or ensemble on an external labelled folder (another lab's images, its own "
            "class names mapped with --map): per-class metrics and per-image predictions under the run, and "
            "ext_<name>_acc / ext_<name>_balanced_acc columns in the leaderboard.", parser=evaluate_parser),
    Command("bench-report", "bench.report.cli:main",
            "Write report.md and its figures for an experiment folder: class-wise tables, published comparison, "
            "accuracy vs cost, confusion matrices, training curves, bootstrap intervals and McNemar tests.",
            parser=report_parser),
    Command("bench-compare", "bench.protocols.compare:main",
            "Side-by-side table of an experiment's variants (e.g. results/scratch_vs_pretrained: scratch vs "
            "frozen), written to <exp_dir>/comparison.csv.", parser=compare_parser),
    Command("bench-benchmark", "bench.benchmark.cli:main",
            "Measure training speed: each model alone (the ceiling), the data path, the harness and a plain "
            "ImageFolder/PIL reference loop, in one run; writes <out>/<name>.csv and .json.",
            parser=benchmark_parser),
]}


# --------------------------------------------------------------------------- help and version
def version() -> str:
    """``bench X`` and the versions of what it runs on, read from the installed metadata (no imports)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    def v(dist: str) -> str:
        try:
            return dist_version(dist)
        except PackageNotFoundError:
            return "not installed"

    return (f"bench {bench.__version__} (python {sys.version.split()[0]}, torch {v('torch')}, "
            f"torchvision {v('torchvision')}, timm {v('timm')}, Hydra {v('hydra-core')})")


def config_groups() -> dict[str, list[str]]:
    """The Hydra config groups and their options, read from the YAML files (not composed)."""
    conf = Path(bench.CONF_DIR)
    groups = {}
    for group in sorted(p for p in conf.iterdir() if p.is_dir() and p.name != "hydra"):
        groups[group.name] = sorted(f.stem for f in group.glob("*.yaml"))
    launcher = conf / "hydra" / "launcher"
    if launcher.is_dir():
        groups["hydra/launcher"] = sorted(f.stem for f in launcher.glob("*.yaml"))
    return groups


def hydra_help(name: str) -> str:
    cmd = COMMANDS[name]
    sweep = " [-m]" if name == "bench-train" else ""
    lines = [f"usage: {name}{sweep} [KEY=VALUE ...]", "", textwrap.fill(cmd.summary, 100), ""]
    if cmd.examples:
        lines += ["examples:", *(f"  {e}" for e in cmd.examples), ""]
    lines += ["config groups (GROUP=OPTION):"]
    for group, options in config_groups().items():
        lines.append(f"  {group + ':':<16} {', '.join(options)}")
    lines += [
        f"  {'model:':<16} any name `bench-models` lists (e.g. resnet18, inception_v3), or timm/<name>",
        "",
        "keys: any key of the config as KEY=VALUE (e.g. trainer.epochs=3 data.image_size=64 seed=1);",
        "a misspelt key or model name fails at start with the closest valid ones.",
    ]
    if name == "bench-train":
        lines += [
            "",
            "Hydra's flags: -m/--multirun (sweep over comma-separated values), --cfg job|hydra|all (print the",
            "composed config), --info, -sc install=bash (tab completion), --hydra-help, --version.",
        ]
    return "\n".join(lines)


def print_help(name: str) -> None:
    cmd = COMMANDS[name]
    if cmd.hydra:
        print(hydra_help(name))
    else:
        cmd.parser().print_help()


def parser(name: str) -> argparse.ArgumentParser:
    """The argparse parser of an argparse tool (its ``main`` parses with it)."""
    cmd = COMMANDS[name]
    return cmd.parser() if cmd.parser is not None else overrides_parser(name)


# --------------------------------------------------------------------------- running a tool
def run(name: str, argv: Sequence[str] | None = None) -> int:
    """Run console script ``name`` with ``argv`` (default: the command line)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in HELP_FLAGS for a in args):
        print_help(name)
        return 0
    if "--version" in args:
        print(version())
        return 0
    module, func = COMMANDS[name].target.split(":")
    try:
        code = getattr(importlib.import_module(module), func)(args) or 0
        sys.stdout.flush()  # a short listing still in the buffer meets a closed pipe here, not at exit
        return code
    except BrokenPipeError:  # the reader went away (`bench-models | head`): stop quietly
        _silence_stdout()
        return 0
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback from deep inside torch
        print(f"\n{name}: interrupted. Everything finished is kept and a run in progress resumes from its "
              "last checkpoint: rerun the same command to go on.", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    # Python flushes stdout at exit and would report the broken pipe again; point it at /dev/null.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _entry(name: str) -> Callable[[], int]:
    def main() -> int:
        return run(name)

    main.__name__ = name.replace("-", "_")
    main.__doc__ = COMMANDS[name].summary
    return main


train = _entry("bench-train")
cv = _entry("bench-cv")
svm = _entry("bench-svm")
fetch_weights = _entry("bench-fetch-weights")
models = _entry("bench-models")
leaderboard = _entry("bench-leaderboard")
ensemble = _entry("bench-ensemble")
predict = _entry("bench-predict")
evaluate = _entry("bench-evaluate")
report = _entry("bench-report")
compare = _entry("bench-compare")
benchmark = _entry("bench-benchmark")


def list_commands() -> str:
    width = max(map(len, COMMANDS))
    lines = [version(), "", "commands (each has --help; also `python -m bench <command> ...`):"]
    for cmd in COMMANDS.values():
        lines.append(f"  {cmd.name:<{width}}  {cmd.summary.split('. ')[0].rstrip('.')}.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench [COMMAND [ARGS...]]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in HELP_FLAGS:
        print(list_commands())
        return 0
    if args[0] == "--version":
        print(version())
        return 0
    name = args[0] if args[0].startswith("bench-") else f"bench-{args[0]}"
    if name not in COMMANDS:
        print(f"bench: no command {args[0]!r}.\n\n{list_commands()}", file=sys.stderr)
        return 2
    return run(name, args[1:])
