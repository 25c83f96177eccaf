"""bench: a model-zoo benchmark for blood-cell images (see README.md).

Kept light on purpose: the console scripts import this package to answer ``--help`` and
``--version`` without importing torch. What ships with the package is found from here.
"""

from pathlib import Path

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("bench")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

PACKAGE_DIR = Path(__file__).resolve().parent
CONF_DIR = str(PACKAGE_DIR / "conf")  # the Hydra configs (package data)
REFERENCE_DIR = PACKAGE_DIR / "reference"  # the published tables (package data)
