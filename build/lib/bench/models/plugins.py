"""Your own architectures, without editing bench: registered from your package or module.

A module that registers models with the decorator is all it takes::

    # my_lab/nets.py
    from bench.models import register_model

    @register_model("lab_cnn", input_size=224, family="lab")
    def lab_cnn(num_classes: int, pretrained: bool = False):
        return MyNet(num_classes)  # any torch.nn.Module returning (N, num_classes) logits

Then either

- declare it in your package's ``pyproject.toml`` (loaded whenever bench builds models)::

      [project.entry-points."bench.models"]
      my_lab = "my_lab.nets"

- or name the module for one shell: ``BENCH_MODELS=my_lab.nets bench-train model=lab_cnn ...``
  (comma-separated; the module must be importable, e.g. on ``PYTHONPATH``).

After that ``lab_cnn`` is a model like the built-in ones: ``bench-models`` lists it,
``model=lab_cnn`` composes, sweeps, ``bench-predict`` and ensembles rebuild it from its
checkpoints. A plugin that fails to import is reported and skipped; the built-in models stay.
"""

from __future__ import annotations

import importlib
import logging
import os
from importlib.metadata import entry_points

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "bench.models"
ENV_VAR = "BENCH_MODELS"


def load_plugins() -> list[str]:
    """Import every ``bench.models`` entry point and every module in ``$BENCH_MODELS``; returns
    what was loaded. Safe to call again (a module already imported is not re-run)."""
    loaded = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
            loaded.append(ep.value)
        except Exception as exc:  # one broken plugin must not take the model zoo down
            log.warning("could not load model plugin %s = %s (%s: %s); its models are not available",
                        ep.name, ep.value, type(exc).__name__, exc)
    for module in filter(None, (m.strip() for m in os.environ.get(ENV_VAR, "").split(","))):
        try:
            importlib.import_module(module)
            loaded.append(module)
        except Exception as exc:
            log.warning("could not import %s=%s (%s: %s); check that the module is importable (PYTHONPATH) "
                        "and imports bench.models.register_model", ENV_VAR, module, type(exc).__name__, exc)
    return loaded
