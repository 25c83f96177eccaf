"""``python -m bench.benchmark``: the same as ``bench-benchmark``; ``run_reference`` starts the
reference loop this way (``python -m bench.benchmark _reference ...``)."""

import sys

from bench.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
