"""Deploy what wins (issue 30): a run, an ensemble or a detector exported to a format that runs without
bench (ONNX, OpenVINO, TorchScript), checked against PyTorch on the run's own validation images before
anything is kept, with its preprocessing contract (``model.json``) and a model card.

Modules: :mod:`.formats` (the network written in each format), :mod:`.classifier` (a classifier run and
its check), :mod:`.ensemble` (an ensemble's members and vote), :mod:`.detector` (a smear-chain detector
and its check), :mod:`.card` (MODEL_CARD.md), :mod:`.folders` (a new folder, filled only when checked).
The runtimes that run the exports are bench.predict.runtimes (bench-predict ``--backend``).
"""

from bench.deploy.classifier import export_run
from bench.deploy.detector import export_detector
from bench.deploy.ensemble import export_ensemble
from bench.deploy.folders import ExportError
from bench.deploy.formats import export_module

__all__ = ["ExportError", "export_detector", "export_ensemble", "export_module", "export_run"]
