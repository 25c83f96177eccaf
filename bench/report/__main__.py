"""``python -m bench.report``: the same as ``bench-report``."""

import sys

from bench.cli.report import main

sys.exit(main())
