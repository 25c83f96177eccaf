"""``bench-benchmark --task detection``: a detector and the smear-field chain, harness vs model alone.

In one run, on synthetic smear fields of ``--field-size`` pixels (``data=synthetic_smear``):

1. **detector alone**: train (forward with targets, backward, SGD step) and eval images/s of the
   network on random in-memory fields with random boxes, the best of a few timing windows;
2. **harness**: ``bench-train`` of the same detector for ``--epochs`` epochs (data reading,
   decoding once, box-aware flips, validation mAP each epoch): train images/s of its fastest
   epoch after the first, and the ratio to (1);
3. **chain**: ``bench-predict --detector`` over ``--fields`` fields with a classifier of
   ``--classifier-model`` on every white-cell box (decoding, detection, crops, classification in
   batches), fields/s, against the detector alone on the same fields already decoded in memory.

Writes ``<out>/<name>.csv`` (one row per measurement) and ``<name>.json`` (the environment), and
prints the table. The harness's detector is trained from scratch, so its boxes (and the number of
crops the chain classifies) are those of a short run: the chain's speed is for that many cells.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .ceiling import time_best
from .common import _log, environment, ratio

DETECTION_MODEL = "fasterrcnn_mobilenet_v3_large_320_fpn"
CHAIN_CLASSIFIER = "simple_cnn"


def is_detector(name: str) -> bool:
    from bench.models import get_model_spec

    try:
        return get_model_spec(name).task == "detection"
    except (KeyError, ValueError):
        return False


def _random_targets(n: int, size: int, n_classes: int, generator):
    import torch

    targets = []
    for _ in range(n):
        xy = torch.rand(8, 2, generator=generator) * (size * 0.8)
        wh = 8 + torch.rand(8, 2, generator=generator) * (size * 0.15)
        targets.append({"boxes": torch.cat([xy, xy + wh], 1),
                        "labels": torch.randint(1, n_classes + 1, (8,), generator=generator)})
    return targets


def measure_detector_alone(name: str, *, image_size: int, batch_size: int, n_classes: int, device, window_s: float,
                           detector_kwargs: dict) -> dict:
    import torch

    from bench.models import create_model

    g = torch.Generator().manual_seed(0)
    model = create_model(name, num_classes=n_classes, pretrained=False, image_size=image_size,
                         detector_kwargs=detector_kwargs).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images = [torch.rand(3, image_size, image_size, generator=g).to(device) for _ in range(batch_size)]
    targets = [{k: v.to(device) for k, v in t.items()} for t in _random_targets(batch_size, image_size, n_classes, g)]

    def train_step():
        loss = sum(model(images, targets).values())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def eval_step():
        with torch.no_grad():
            model(images)

    model.train()
    t_train = time_best(train_step, device=device, warmup=2, repeats=3, window_s=window_s)
    model.eval()
    t_eval = time_best(eval_step, device=device, warmup=1, repeats=3, window_s=window_s)
    return {"train": batch_size / t_train, "eval": batch_size / t_eval}


def _classifier_checkpoint(path: Path, classes: list[str], image_size: int) -> Path:
    """An untrained classifier's best.pt: the chain's speed does not depend on its weights."""
    import torch
    from omegaconf import OmegaConf

    from bench.training.checkpoints import save_checkpoint
    from bench.models import create_model

    torch.manual_seed(0)
    model = create_model(CHAIN_CLASSIFIER, num_classes=len(classes), pretrained=False)
    data_cfg = OmegaConf.create({"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
    save_checkpoint(path, model.state_dict(), model_name=CHAIN_CLASSIFIER, class_names=classes,
                    input_size=image_size, data_cfg=data_cfg)
    return path


def run_detection_benchmark(args) -> int:
    """--task detection: one detector alone vs trained by the harness, and the chain's fields/s."""
    import pandas as pd

    from bench import runs

    from bench.runs import files as run_files
    from bench.config import compose_config
    from bench.training.device import resolve_device

    device = resolve_device(args.device)
    name = args.name or f"detection-{args.field_size}px"
    model = args.models if is_detector(args.models) else DETECTION_MODEL
    work = Path(args.out) / f"{name}.work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = environment(device)
    overrides = ["experiment=detect_quickstart", f"model={model}", f"data.image_size={args.field_size}",
                 f"data.smear_size={args.field_size}", f"data.smear_n_fields={max(args.fields, 24)}",
                 f"trainer.epochs={args.epochs}", f"trainer.batch_size={args.batch_size}",
                 f"trainer.device={device}", "trainer.progress=false", f"paths.results_dir={work / 'results'}",
                 f"paths.cache_dir={work / 'cache'}", "experiment_name=detbench", *args.set]
    train_row, run_dir = measure_training(args, compose_config(overrides), model, device)
    if run_dir is None:
        return 1
    chain_row, n_typed = measure_chain(args, model, run_dir, work, device)
    alone_eval = train_row.pop("alone_eval")
    frame = pd.DataFrame([train_row, chain_row,
                          {"measure": "detector eval img/s", "harness": None, "alone": alone_eval, "ratio": None}])
    frame["model"] = model
    frame["cells_typed"] = n_typed
    frame["val_map"] = run_files.read_metrics(run_dir)["val"]["map"]
    env["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    runs.write_csv_atomic(Path(args.out) / f"{name}.csv", frame)
    runs.write_json_atomic(Path(args.out) / f"{name}.json", env)
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"\nwrote {Path(args.out) / (name + '.csv')} and .json; {n_typed} cells typed in "
          f"{args.fields} fields (the harness's detector after {args.epochs} epoch(s))")
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def measure_training(args, cfg, model: str, device) -> tuple[dict, Path | None]:
    """Train img/s of the detector alone (random fields) and through bench-train (the steady epoch);
    the harness's run folder, None when it failed."""
    import pandas as pd

    from bench.training.detector import detector_kwargs
    from bench.training import run_training

    _log(f"{model} alone at {args.field_size} px, batch {args.batch_size}")
    alone = measure_detector_alone(model, image_size=args.field_size, batch_size=args.batch_size, n_classes=3,
                                   device=device, window_s=args.ceiling_window,
                                   detector_kwargs=detector_kwargs(cfg))  # what bench-train gives it
    _log(f"the harness: bench-train {model}, {args.epochs} epochs")
    out = run_training(cfg)
    if out["status"] != "completed":
        _log(f"the harness run failed: {out.get('error')}")
        return {}, None
    epochs = pd.read_csv(Path(out["run_dir"]) / "history.csv")["train_img_s"].tolist()
    harness = max(epochs[1:]) if len(epochs) > 1 else epochs[0]  # the steady rule of the classifiers
    return {"measure": "detector train img/s", "harness": harness, "alone": alone["train"],
            "ratio": ratio(harness, alone["train"]), "alone_eval": alone["eval"]}, Path(out["run_dir"])


def measure_chain(args, model: str, run_dir: Path, work: Path, device) -> tuple[dict, int]:
    """Fields/s of bench-predict --detector on the first --fields synthetic fields against the
    detector's forward passes alone on the same fields; and how many cells the chain typed."""
    import argparse

    import torch

    from bench.cascade import run as cascade
    from bench.cascade.models import load_detector
    from bench.data.synthetic import CLASS_NAMES
    from bench.detection.data import open_field
    from bench.detection.fields import field_tensor

    root = next((work / "cache" / "datasets").glob("synthetic-smear-*"))
    fields = sorted((root / "images").glob("*.png"))[:args.fields]
    chain_dir = work / "fields"
    chain_dir.mkdir()
    for f in fields:
        shutil.copy(f, chain_dir / f.name)
    clf = _classifier_checkpoint(work / "classifier" / "best.pt", list(CLASS_NAMES), 64)
    _log(f"the chain: {len(fields)} fields, {model} -> {CHAIN_CLASSIFIER}")
    chain_args = argparse.Namespace(
        images_dir=chain_dir, detector=run_dir, classifier=[str(clf)], checkpoint=[], ensemble=None,
        out=work / "chain", method=None, batch_size=64, device=str(device), classify_labels="wbc", margin=0.25,
        crop_size=None, score_threshold=None, truth=None, truth_map=None, score_level="cell", quiet=True,
        allow_seen_fields=True)  # the detector's own fields: a measure of speed, not of counts
    chain = cascade.run(chain_args)["summary"]
    det = load_detector(run_dir, device)
    tensors = [field_tensor(open_field(f), det.input_size)[0].float().div(255).to(device)
               for f in fields]

    def detect_all():
        with torch.no_grad():
            for start in range(0, len(tensors), 4):
                det.model(tensors[start:start + 4])

    alone = len(fields) / time_best(detect_all, device=device, warmup=1, repeats=3, window_s=args.ceiling_window,
                                    min_steps=1)
    return {"measure": "chain fields/s", "harness": chain["fields_per_s"], "alone": alone,
            "ratio": ratio(chain["fields_per_s"], alone)}, chain["n_typed"]
