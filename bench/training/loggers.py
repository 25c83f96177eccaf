"""Experiment trackers: ``logger=csv|tensorboard|mlflow`` (``none`` by default).

The run folder is the record (history.csv, metrics.json); a logger is a copy for the tools a
lab already uses. Each receives the run's parameters (the flattened config), one set of
numbers per epoch (loss, accuracies, balanced accuracy, macro F1, learning rate, images/s)
and the final numbers (validation and test accuracy, balanced accuracy, macro F1, per-class
test accuracy), plus the final metrics.json as a file where the backend keeps files:

- ``csv``: ``<logger.dir>/<experiment>/<model>-seed<seed>/`` with params.json, epochs.csv and
  final.json (``logger.dir`` defaults to ``<results_dir>/<experiment>/logs``);
- ``tensorboard``: event files under ``<logger.dir>/tensorboard/<model>-seed<seed>`` (scalars
  per epoch, the parameters as text, the final numbers as hparams); ``tensorboard --logdir``;
- ``mlflow``: one MLflow run per training run in the experiment ``<experiment>``, at
  ``logger.tracking_uri`` (default: the local file store ``<results_dir>/mlruns``, no server
  needed; ``mlflow ui --backend-store-uri <it>``). MLflow 3 keeps the file store in
  maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``, which this sets for ``file:`` URIs.

A logger never fails a run: an error while logging is reported once and the logger is dropped.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

from bench.config import LOGGERS  # noqa: F401  (the choices, defined once)

log = logging.getLogger("bench.train")

PACKAGES = {"tensorboard": ("tensorboard", "pip install tensorboard"),
            "mlflow": ("mlflow", "pip install mlflow-skinny (or mlflow)")}


def missing_package(kind: str) -> str | None:
    """A one-line problem when the backend's package is not installed, else None."""
    if kind not in PACKAGES:
        return None
    import importlib.util

    module, fix = PACKAGES[kind]
    if importlib.util.find_spec(module) is None:
        return f"logger={kind} needs the {module} package, which is not installed: {fix}, or set logger=none."
    return None


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists become their JSON text."""
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: json.dumps(tree) if isinstance(tree, (list, tuple)) else tree}


def final_numbers(metrics: dict) -> dict[str, float]:
    """The scalar results of metrics.json a tracker shows: accuracy, balanced accuracy, macro F1
    on validation and test, and the class-wise test accuracy."""
    out = {}
    for split in ("val", "test"):
        m = metrics.get(split) or {}
        out[f"final_{split}_acc"] = m.get("accuracy")
        out[f"final_{split}_balanced_acc"] = m.get("balanced_accuracy")
        out[f"final_{split}_macro_f1"] = (m.get("macro") or {}).get("f1")
    for cls, scores in ((metrics.get("test") or {}).get("per_class") or {}).items():
        out[f"final_test_acc_{cls}"] = scores.get("accuracy")
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float))}


class RunLogger:
    """The interface: parameters once, then one call per epoch, then the final metrics."""

    def params(self, params: dict[str, Any]) -> None: ...

    def epoch(self, epoch: int, numbers: dict[str, float]) -> None: ...

    def final(self, metrics: dict) -> None: ...

    def close(self) -> None: ...


class CsvLogger(RunLogger):
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def params(self, params):
        (self.folder / "params.json").write_text(json.dumps(params, indent=2, default=str) + "\n")

    def epoch(self, epoch, numbers):
        path = self.folder / "epochs.csv"
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["epoch", *numbers])
            if new:
                writer.writeheader()
            writer.writerow({"epoch": epoch, **numbers})

    def final(self, metrics):
        (self.folder / "final.json").write_text(json.dumps(final_numbers(metrics), indent=2) + "\n")


class TensorBoardLogger(RunLogger):
    def __init__(self, folder: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder))
        self._params: dict[str, Any] = {}

    def params(self, params):
        self._params = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
        self.writer.add_text("params", "\n".join(f"    {k}: {v}" for k, v in self._params.items()))

    def epoch(self, epoch, numbers):
        for key, value in numbers.items():
            self.writer.add_scalar(key, value, epoch)

    def final(self, metrics):
        self.writer.add_hparams(self._params, final_numbers(metrics), run_name=".")

    def close(self):
        self.writer.close()


class MlflowLogger(RunLogger):
    def __init__(self, tracking_uri: str, experiment: str, run_name: str):
        if tracking_uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            try:
                exp_id = self.client.create_experiment(experiment)
            except Exception:  # the array's first tasks start together: another one created it just now
                found = self.client.get_experiment_by_name(experiment)
                if found is None:
                    raise
        if found is not None:
            exp_id = found.experiment_id
        self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id

    def params(self, params):
        for key, value in params.items():
            self.client.log_param(self.run_id, key, str(value)[:500])

    def epoch(self, epoch, numbers):
        for key, value in numbers.items():
            self.client.log_metric(self.run_id, key, value, step=epoch)

    def final(self, metrics):
        for key, value in final_numbers(metrics).items():
            self.client.log_metric(self.run_id, key, value)
        self.client.log_dict(self.run_id, metrics, "metrics.json")

    def close(self):
        self.client.set_terminated(self.run_id)


class SafeLogger:
    """Wraps a backend: the first error is logged and the backend dropped; the run goes on."""

    def __init__(self, backend: RunLogger | None, kind: str):
        self.backend, self.kind = backend, kind

    def _call(self, method: str, *args) -> None:
        if self.backend is None:
            return
        try:
            getattr(self.backend, method)(*args)
        except Exception as exc:  # tracking is a copy of the run folder; never worth a failed run
            log.warning("logger=%s failed (%s: %s); logging to it stops, the run goes on", self.kind,
                        type(exc).__name__, exc)
            self.backend = None

    def params(self, params):
        self._call("params", params)

    def epoch(self, epoch, numbers):
        self._call("epoch", epoch, numbers)

    def final(self, metrics):
        self._call("final", metrics)

    def __enter__(self) -> "SafeLogger":
        return self

    def __exit__(self, *exc) -> None:
        self._call("close")


def make_logger(cfg, model_dirname: str, seed: int) -> SafeLogger:
    """The run's logger from ``cfg.logger`` (a no-op for ``none``)."""
    lcfg = cfg.get("logger") or {}
    kind = lcfg.get("kind", "none") or "none"
    if kind == "none":
        return SafeLogger(None, kind)
    exp_dir = Path(cfg.paths.results_dir) / cfg.experiment_name
    base = Path(lcfg.get("dir") or exp_dir / "logs")
    name = f"{model_dirname}-seed{seed}"
    try:
        if kind == "csv":
            backend: RunLogger = CsvLogger(base / "csv" / name)
        elif kind == "tensorboard":
            backend = TensorBoardLogger(base / "tensorboard" / name)
        elif kind == "mlflow":
            uri = lcfg.get("tracking_uri") or f"file:{(Path(cfg.paths.results_dir) / 'mlruns').resolve()}"
            backend = MlflowLogger(uri, str(cfg.experiment_name), name)
        else:
            raise ValueError(f"logger={kind!r} is not one of {', '.join(LOGGERS)}")
    except Exception as exc:
        log.warning("logger=%s could not start (%s: %s); the run goes on without it", kind, type(exc).__name__, exc)
        return SafeLogger(None, kind)
    return SafeLogger(backend, kind)
