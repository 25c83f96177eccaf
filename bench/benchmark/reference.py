"""4. The reference loop: the paper's plain ImageFolder + DataLoader loop, run in a process of its
own (``python -m bench.benchmark _reference ...``) so that its wall time includes start-up."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .common import _overall, _sync, steady


def reference_datasets(root, manifest_path, image_size: int, mean, std):
    """The paper's data path: ImageFolder on the manifest's train and val files, PIL transforms
    applied per image per epoch (train: flips, rotation 60, resize; val: resize)."""
    import csv

    from torchvision import datasets
    from torchvision import transforms as T

    root = Path(root)
    with open(manifest_path, newline="", encoding="utf-8") as fh:
        manifest = list(csv.DictReader(fh))
    normalize = T.Normalize(list(mean), list(std))
    tfs = {
        "train": T.Compose([T.RandomHorizontalFlip(), T.RandomVerticalFlip(), T.RandomRotation(60),
                            T.Resize((image_size, image_size)), T.ToTensor(), normalize]),
        "val": T.Compose([T.Resize((image_size, image_size)), T.ToTensor(), normalize]),
    }
    out = {}
    for split, tf in tfs.items():
        keep = {row["path"] for row in manifest if row["split"] == split}

        def is_valid(path: str, keep=keep) -> bool:
            return Path(os.path.relpath(path, root)).as_posix() in keep

        out[split] = datasets.ImageFolder(str(root), transform=tf, is_valid_file=is_valid, allow_empty=True)
    return out


def relative_samples(dataset, root) -> list[str]:
    """The files an ImageFolder yields, relative to ``root`` with forward slashes."""
    return [Path(os.path.relpath(p, root)).as_posix() for p, _ in dataset.samples]


def reference_main(argv: list[str]) -> int:
    """The reference loop, run as its own process: ``python -m bench.benchmark _reference ...``."""
    a = _reference_parser().parse_args(argv)
    # Only what a plain training script imports (torch, torchvision) plus the model zoo, so
    # the reference's start-up is not inflated by the harness's own imports.
    import torch
    from torch.utils.data import DataLoader

    from bench.models import create_model, get_model_spec

    device = torch.device(a.device)
    mean, std = [float(v) for v in a.mean.split(",")], [float(v) for v in a.std.split(",")]
    ds = reference_datasets(a.root, a.manifest, a.image_size, mean, std)
    classes = a.classes.split(",")
    if ds["train"].classes != classes:
        raise SystemExit(f"ImageFolder classes {ds['train'].classes} differ from the harness's {classes}")
    train_dl = DataLoader(ds["train"], batch_size=a.batch_size, shuffle=True, num_workers=a.workers)
    val_dl = DataLoader(ds["val"], batch_size=a.batch_size, shuffle=False, num_workers=a.workers)
    torch.manual_seed(a.seed)
    model = create_model(a.model, num_classes=len(classes), pretrained=False).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    epochs = []
    for _ in range(a.epochs):
        epochs.append(_reference_epoch(model, train_dl, val_dl, optimizer, get_model_spec(a.model).aux_weight, device))
        scheduler.step()
    Path(a.out).write_text(json.dumps({"epochs": epochs, "n_train": len(ds["train"]), "n_val": len(ds["val"])}))
    return 0


def _reference_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench-benchmark _reference")
    p.add_argument("--root", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--classes", required=True, help="comma-separated class names the harness uses")
    p.add_argument("--image-size", type=int, required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mean", default="0.485,0.456,0.406")
    p.add_argument("--std", default="0.229,0.224,0.225")
    p.add_argument("--out", required=True)
    return p


def _reference_epoch(model, train_dl, val_dl, optimizer, aux_weight: float, device) -> dict:
    """One epoch the way a plain script writes it: train, then validation accuracy."""
    import torch

    from bench.training.engine import split_outputs

    criterion = torch.nn.CrossEntropyLoss()
    model.train()
    n, t0 = 0, time.perf_counter()
    for x, y in train_dl:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        logits, aux = split_outputs(model(x))
        loss = criterion(logits, y) + sum(aux_weight * criterion(o, y) for o in aux)
        loss.backward()
        optimizer.step()
        n += len(y)
    _sync(device)
    train_s = time.perf_counter() - t0
    model.eval()
    correct, total = 0, 0
    with torch.no_grad():
        for x, y in val_dl:
            pred = model(x.to(device)).argmax(1).cpu()
            correct += int((pred == y).sum())
            total += len(y)
    return {"train_img_s": n / train_s, "train_s": train_s, "val_acc": correct / max(total, 1)}


def run_reference(args, model: str, *, image_size: int, manifest: Path, classes: list[str], mean, std, device,
                  work: Path) -> dict:
    """The reference loop in a process of its own; its wall time includes start-up."""
    out = work / f"reference-{model.replace('/', '--')}.json"
    cmd = [sys.executable, "-m", "bench.benchmark", "_reference", "--root", str(args.root),
           "--manifest", str(manifest), "--model", model, "--classes", ",".join(classes),
           "--mean", ",".join(map(str, mean)), "--std", ",".join(map(str, std)),
           "--image-size", str(image_size), "--epochs", str(args.epochs),
           "--batch-size", str(args.batch_size), "--workers", str(args.ref_workers),
           "--device", str(device), "--seed", str(args.seed), "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"reference loop of {model} failed:\n{proc.stderr[-3000:]}")
    rep = json.loads(out.read_text())
    img_s = [e["train_img_s"] for e in rep["epochs"]]
    accs = [e["val_acc"] for e in rep["epochs"]]
    return {
        "ref_workers": args.ref_workers,
        "ref_train_img_s": steady(img_s),
        "ref_train_img_s_all": _overall(img_s),
        "ref_val_acc": accs[-1],
        "ref_val_acc_best": max(accs),
        "ref_wall_s": wall,
    }
