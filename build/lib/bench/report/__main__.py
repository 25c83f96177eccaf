"""``python -m bench.report``: the same as ``bench-report``."""

import sys

from bench.report.cli import main

sys.exit(main())
