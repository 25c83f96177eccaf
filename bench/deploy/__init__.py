"""Deploy what wins (issue 30): a run exported to a format that runs without bench, checked against
PyTorch on the run's own validation images before anything is kept, with its preprocessing contract.

Modules: :mod:`.onnx_export` (``bench-export RUN --format onnx``: the network, ``model.json``, the check).
"""

from bench.deploy.onnx_export import ExportError, export_ensemble, export_module, export_onnx, onnx_probs

__all__ = ["ExportError", "export_ensemble", "export_module", "export_onnx", "onnx_probs"]
