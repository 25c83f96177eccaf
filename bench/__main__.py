"""``python -m bench``: the list of tools; ``python -m bench train ...`` runs ``bench-train ...``."""

import sys

from bench.cli.commands import main

if __name__ == "__main__":
    sys.exit(main())
