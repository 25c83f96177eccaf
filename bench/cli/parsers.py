"""The argument parsers of the argparse tools and the CLI defaults, for :mod:`bench.cli.commands`.

Like the command table, this module imports nothing heavier than ``argparse``, so every tool's
``--help`` stays instant. Each parser takes its description (the command's summary in the table),
so one definition serves the parse and the help.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# --------------------------------------------------------------------------- CLI defaults
# The Python API's defaults (bench.metrics.statistics, bench.report, bench.benchmark) are the same numbers;
# tests/cli/test_package.py checks that they agree.
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
    "calibrated": "true: each member's probabilities scaled by the temperature its run fitted on validation "
                  "before the vote (default false: raw)",
}


def _image_size(text: str) -> int | None:
    if text in ("model", "native", "null", "0"):
        return None
    size = int(text)
    if size < 8:
        raise argparse.ArgumentTypeError(f"--image-size {size} is too small")
    return size


# --------------------------------------------------------------------------- argparse tools
def models_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench-models", description=description + " Any timm "
                                "model can also be used as timm/<name>.")
    p.add_argument("pattern", nargs="?", default=None,
                   help="fnmatch glob, e.g. 'resnet*'; 'timm/<glob>' searches timm's models")
    return p


def leaderboard_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench-leaderboard", description=description)
    p.add_argument("exp_dir", type=Path, help="experiment folder, e.g. results/<experiment>")
    p.add_argument("--max-rows", type=int, default=None, help="print at most this many rows")
    return p


def ensemble_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench-ensemble", description=description,
        epilog="options (key=value): " + "; ".join(f"{k}: {d}" for k, d in ENSEMBLE_OPTIONS.items()))
    p.add_argument("exp_dir", type=Path, help="experiment folder, e.g. results/<experiment>")
    p.add_argument("overrides", nargs="*", help="key=value options, e.g. k=4 method=majority")
    return p


def predict_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench-predict", description=description)
    p.add_argument("images_dir", type=Path, help="folder of images (searched recursively)")
    p.add_argument("--checkpoint", "-c", action="append", type=Path, default=[], metavar="PT",
                   help="a best.pt from bench-train; repeat for an ensemble (first = best ranked)")
    p.add_argument("--ensemble", type=Path, default=None, metavar="DIR",
                   help="an ensemble folder results/<exp>/ensembles/<name>: its members' best.pt")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--calibrated", action="store_true",
                   help="scale each model's probabilities by the temperature its run fitted on validation (the "
                        "summary says which probabilities were used)")
    p.add_argument("--method", choices=sorted(PREDICT_METHODS), default=None,
                   help="combine by majority vote or mean probability (default: the ensemble's own voting; "
                        "soft for one checkpoint, majority for several)")
    p.add_argument("--batch-size", type=int, default=64, help="images (or cell crops) per forward pass")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    p.add_argument("--backend", choices=("auto", "torch", "onnxruntime", "openvino"), default="auto",
                   help="what runs the models: torch (a best.pt, or a TorchScript export), onnxruntime (an ONNX "
                        "export), openvino (an ONNX or OpenVINO export); auto: each model's own (export folders "
                        "from bench-export run on the CPU)")
    chain = p.add_argument_group("smear fields: detector -> cell classifier (IMAGES_DIR holds whole fields)")
    chain.add_argument("--detector", type=Path, default=None, metavar="DET",
                       help="a detector run folder (results/<exp>/runs/<detector>/seed<seed>), its best.pt, or its "
                            "bench-export folder")
    chain.add_argument("--classifier", action="append", default=[], metavar="[LABEL=]CLS",
                       help="the cell classifier: a best.pt, run folder, ensemble folder or bench-export folder; LABEL=CLS (repeatable) "
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
    chain.add_argument("--allow-seen-fields", action="store_true",
                       help="run on fields the detector trained or validated on (refused otherwise: its numbers "
                            "there are optimistic), every number labelled as such")
    chain.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def evaluate_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench-evaluate", description=description)
    p.add_argument("source", type=Path, help="an experiment folder (results/<exp>: every completed run and ensemble), "
                                             "a run folder (results/<exp>/runs/<model>/seed<seed>), its best.pt, or "
                                             "an ensemble folder (results/<exp>/ensembles/<name>)")
    p.add_argument("data_root", type=Path, help="the external test set: one sub-folder per class")
    p.add_argument("--set", dest="preset", default=None, metavar="PRESET",
                   help="a known public set (its folder-to-class map, name, source, licence and citation): "
                        "segmentation_wbc_dataset1, segmentation_wbc_dataset2, bccd_wbc, raabin_wbc, lisc, munich_aml")
    p.add_argument("--map", default=None, metavar="FOLDER=CLASS,...",
                   help="which model class each folder is, where the names differ beyond case "
                        "(e.g. Neutrophil=neutrophil,Lympho=lymphocyte); other folders are left out and reported")
    p.add_argument("--name", default=None, help="name of the test set (default: the preset's, else the folder's "
                                                "name); leaderboard columns ext_<name>_acc, _balanced_acc, _macro_f1")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    return p


def report_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench-report", description=description)
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


def compare_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench-compare", description=description)
    p.add_argument("exp_dir", type=Path, help="folder holding the variants' experiment folders")
    p.add_argument("--variants", nargs="+", default=None,
                   help="sub-folders to compare, in column order (default: every sub-folder with runs/)")
    return p


def benchmark_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench-benchmark", description=description,
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
    p.add_argument("--task", choices=("classification", "detection", "export"), default="classification",
                   help="export: PyTorch eager vs TorchScript, ONNX Runtime and OpenVINO, classifier images/s at batch 1 "
                        "and 32 and a detector's fields/s (bench.benchmark.export); "
                        "detection: one detector (--models, default fasterrcnn_mobilenet_v3_large_320_fpn) alone vs "
                        "in the harness, and the smear-field chain's fields/s (bench.benchmark.detection)")
    p.add_argument("--export", dest="task", action="store_const", const="export", default=argparse.SUPPRESS,
                   help="the same as --task export")
    p.add_argument("--field-size", type=int, default=256,
                   help="--task detection or export: synthetic field side in pixels")
    p.add_argument("--fields", type=int, default=24,
                   help="--task detection: fields through the chain; export: fields per timed call (at most 8)")
    p.add_argument("--detector-model", default=None,
                   help="--task export: the detector timed per backend (default fasterrcnn_mobilenet_v3_large_320_fpn)")
    p.add_argument("--no-detector", action="store_true", help="--task export: time the classifiers only")
    p.add_argument("--synthetic-n-per-class", type=int, default=60)
    p.add_argument("--synthetic-size", type=int, default=96)
    p.add_argument("--protocol-images", type=int, default=17092,
                   help="images of the full dataset for est_protocol_s (PBC: 17,092)")
    p.add_argument("--protocol-epochs", type=int, default=25)
    p.add_argument("--keep-work", action="store_true", help="keep the run folders and caches under <out>/<name>.work")
    return p


def overrides_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The Hydra-override tools parse ``KEY=VALUE ...`` only; their help is :func:`bench.cli.commands.hydra_help`."""
    p = argparse.ArgumentParser(prog=name, description=description, add_help=False)
    p.add_argument("overrides", nargs="*", help="bench-train overrides, e.g. experiment=gavas2021 data.root=PATH")
    return p


def sweep_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench-sweep", description=description,
        epilog="e.g. bench-sweep submit experiment=gavas2021 data.root=/data/PBC hydra.launcher.partition=gpu; "
               "bench-sweep status results/gavas2021; bench-sweep resubmit results/gavas2021")
    p.add_argument("action", choices=("plan", "submit", "status", "resubmit", "wait"),
                   help="plan OVERRIDES...: each run's measured time and memory, what to ask Slurm for; "
                        "submit OVERRIDES...: preflight, submit one job array, exit; status EXP: each run's state and "
                        "the scheduler's; resubmit EXP [hydra.launcher.*=...]: the failed and lost runs again; "
                        "wait EXP: until every run ended")
    p.add_argument("target", nargs="+", help="bench-train overrides (submit) or the experiment folder")
    p.add_argument("--every", type=float, default=30.0, help="wait: seconds between looks (default 30)")
    return p


def export_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench-export", description=description,
                                epilog="e.g. bench-export results/quickstart/runs/resnet18/seed0 --out exports/resnet18")
    p.add_argument("run", type=Path, help="a classifier run folder (or its best.pt), an ensemble folder "
                                          "(results/<exp>/ensembles/<name>) or a detector run folder")
    p.add_argument("--format", choices=("onnx", "openvino", "torchscript"), default="onnx",
                   help="onnx (ONNX Runtime or OpenVINO run it), openvino (model.xml + model.bin) or torchscript "
                        "(classifiers only: PyTorch runs it without bench); default onnx")
    p.add_argument("--out", type=Path, required=True, help="a new folder for the model file and model.json")
    p.add_argument("--check-images", type=Path, default=None,
                   help="images (or smear fields, for a detector) to check the export on when the run's validation "
                        "images are not at hand")
    return p


def tune_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench-tune", description=description,
        epilog="e.g. bench-tune model=resnet18,vgg16 tune.space=\"{optim.lr: 'log(1e-4, 1e-1)', "
               "optim.momentum: [0.8, 0.95]}\" tune.trials=20 tune.workers=2; then the same with --final")
    p.add_argument("overrides", nargs="*", help="bench-train overrides; model=a,b (one study each), seed=0,1 "
                                                "(--final), tune.* (space, trials, workers, pruner, seed, storage)")
    p.add_argument("--final", action="store_true",
                   help="retrain each model's best configuration (chosen on validation) as <experiment>/tuned")
    return p
