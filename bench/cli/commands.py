"""Every console script in one light module: its summary, its arguments and its help.

The ``bench-*`` scripts point here. ``--help`` and ``--version`` are answered from this
module alone, which imports nothing heavier than ``argparse`` (about 0.1 s, where importing
torch takes seconds); anything else imports the tool and runs it. The argparse tools build
their parser here (one definition: the tool parses with the same parser its help shows; the
parsers and the CLI defaults are in :mod:`bench.cli.parsers`, as light), the Hydra tools
(``KEY=VALUE`` overrides) get a help page listing the config groups.

``python -m bench`` lists the tools; ``python -m bench train ...`` runs ``bench-train ...``.

A broken pipe (``bench-models | head``) ends the tool quietly.
"""

from __future__ import annotations

import argparse
import re
import importlib
import os
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import bench
from bench.cli.parsers import (benchmark_parser, compare_parser, ensemble_parser, evaluate_parser,
                                   leaderboard_parser, models_parser, overrides_parser, predict_parser, report_parser,
                                   sweep_parser, export_parser, tune_parser)

HELP_FLAGS = ("-h", "--help")


@dataclass(frozen=True)
class Command:
    name: str
    target: str  # "module:function", called with the argument list
    summary: str
    parser: Callable[[str], argparse.ArgumentParser] | None = None  # argparse tools; called with the summary
    hydra: bool = False  # takes bench-train's KEY=VALUE overrides
    examples: tuple[str, ...] = ()


# --------------------------------------------------------------------------- the table
COMMANDS: dict[str, Command] = {c.name: c for c in [
    Command("bench-train", "bench.cli.train:cli",
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
    Command("bench-cv", "bench.cli.cv:main",
            "Cross-validate a model: cv.folds=K stratified k-fold or cv.repeats=R Monte Carlo splits, one run per "
            "fold, then cv_folds.csv and cv_summary.csv (mean and std). Experiments: almotairi2019 (WBCsNet, "
            "10-fold), cheuque2022_two_level (two-level classifier, 10 x 70/30).",
            hydra=True, examples=("bench-cv experiment=almotairi2019 data.root=/data/PBC",
                                  "bench-cv experiment=almotairi2019 data.root=/data/PBC cv.fold=3   # one fold")),
    Command("bench-svm", "bench.cli.svm:main",
            "SVMs on frozen-CNN features (Acevedo et al. 2019): every svm.feature_models x svm.kernels in one "
            "invocation (no -m); runs, leaderboard and cached features under results/<experiment>/.",
            hydra=True, examples=("bench-svm experiment=acevedo2019_svm data.root=/data/PBC",
                                  "bench-svm experiment=acevedo2019_svm data.root=/data/PBC svm.kernels=[cubic]")),
    Command("bench-fetch-weights", "bench.cli.fetch_weights:main",
            "Download the pretrained weights of every model a bench-train command would use (same overrides, "
            "or bare model names) into the standard caches (torch hub, Hugging Face).",
            hydra=True, examples=("bench-fetch-weights experiment=gavas2021", "bench-fetch-weights resnet18 vgg19")),
    Command("bench-models", "bench.cli.models:main",
            "List the models bench can build: name, input size, family, source.", parser=models_parser),
    Command("bench-leaderboard", "bench.cli.leaderboard:main",
            "Collect the runs of an experiment folder into leaderboard.csv, per_class.csv and summary.csv, and "
            "print the ranking (by validation accuracy).", parser=leaderboard_parser),
    Command("bench-ensemble", "bench.cli.ensemble:main",
            "Ensemble the completed runs of an experiment from their saved predictions: choose members on "
            "validation, vote per image, report val and test metrics, write <exp>/ensembles/<name>/ and a "
            "leaderboard row of kind 'ensemble'.", parser=ensemble_parser),
    Command("bench-predict", "bench.cli.predict:main",
            "Classify a folder of cell images with one checkpoint or an ensemble of checkpoints; write "
            "predictions.csv, counts.csv (differential count) and unreadable.csv into --out. With --detector: whole "
            "smear fields, each cell found, cropped and typed (cells.csv, counts.csv, one picture per field; "
            "--truth scores the chain).", parser=predict_parser),
    Command("bench-evaluate", "bench.cli.evaluate:main",
            "Evaluate a trained run or ensemble on an external labelled folder (another lab's images, its own "
            "class names mapped with --map): per-class metrics and per-image predictions under the run, and "
            "ext_<name>_acc / ext_<name>_balanced_acc columns in the leaderboard.", parser=evaluate_parser),
    Command("bench-report", "bench.cli.report:main",
            "Write report.md and its figures for an experiment folder: class-wise tables, published comparison, "
            "accuracy vs cost, confusion matrices, training curves, bootstrap intervals and McNemar tests.",
            parser=report_parser),
    Command("bench-compare", "bench.cli.compare:main",
            "Side-by-side table of an experiment's variants (e.g. results/scratch_vs_pretrained: scratch vs "
            "frozen), written to <exp_dir>/comparison.csv.", parser=compare_parser),
    Command("bench-sweep", "bench.cli.sweep:main",
            "Submit a sweep to Slurm as one job array and exit, then see each run's state beside the scheduler's, "
            "send again only the runs that failed or were lost, or wait for the end.", parser=sweep_parser),
    Command("bench-tune", "bench.cli.tune:main",
            "Give every architecture the same tuning budget: one Optuna study per model over tune.space, each trial "
            "a normal run, pruned on validation, continued by running the command again; --final retrains the best.",
            parser=tune_parser),
    Command("bench-export", "bench.cli.export:main",
            "Export a classifier run, an ensemble or a detector run to ONNX, OpenVINO or TorchScript with model.json "
            "(input size, resize, stain target, mean/std, classes, temperature, referral threshold), checked "
            "against PyTorch on the run's validation images first.",
            parser=export_parser),
    Command("bench-benchmark", "bench.cli.benchmark:main",
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
    # conf/external/ holds bench-evaluate's presets of public external test sets, not a config group.
    for group in sorted(p for p in conf.iterdir() if p.is_dir() and p.name not in ("hydra", "external")):
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
        cmd.parser(cmd.summary).print_help()


def parser(name: str) -> argparse.ArgumentParser:
    """The argparse parser of an argparse tool (its ``main`` parses with it)."""
    cmd = COMMANDS[name]
    return cmd.parser(cmd.summary) if cmd.parser is not None else overrides_parser(name, cmd.summary)


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
sweep = _entry("bench-sweep")
export = _entry("bench-export")
tune = _entry("bench-tune")
benchmark = _entry("bench-benchmark")


def first_sentence(text: str) -> str:
    """Up to the first full stop that ends a sentence: one followed by a capital letter, so "et al. 2019"
    and "e.g. results/" stay whole."""
    return re.split(r"\.\s+(?=[A-Z])", text, maxsplit=1)[0].rstrip(".") + "."


def list_commands() -> str:
    width = max(map(len, COMMANDS))
    lines = [version(), "", "commands (each has --help; also `python -m bench <command> ...`):"]
    for cmd in COMMANDS.values():
        lines.append(f"  {cmd.name:<{width}}  {first_sentence(cmd.summary)}")
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
