"""Every console script: the command table, help and dispatch (:mod:`.commands`), the argparse
parsers (:mod:`.parsers`), the checks of a command line (:mod:`.checks`), and one module per
command with its ``main``. Nothing outside this package parses arguments, and nothing imports it
but the entry points (``bench-*``, ``python -m bench``).
"""
