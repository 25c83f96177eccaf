"""``bench-models [PATTERN]``: list the registered models.

PATTERN is an fnmatch glob over registry names (``'vgg*'``, ``'*resnet*'``);
a pattern starting with ``timm/`` searches timm's catalogue (``'timm/efficientnet_b*'``).
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    from bench.cli.commands import parser

    args = parser("bench-models").parse_args(argv)

    from bench.models import get_model_spec, list_models

    names = list_models(args.pattern)
    if not names:
        print(f"no models match {args.pattern!r}", file=sys.stderr)
        return 1
    rows = [("name", "task", "input", "family", "source")]
    for name in names:
        spec = get_model_spec(name)
        size = f"{spec.input_size}" + (f" (min {spec.min_input_size})" if spec.min_input_size else "")
        rows.append((name, spec.task, size, spec.family, spec.source))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if args.pattern is None:
        print("\n(any timm model is also available as timm/<name>; try: bench-models 'timm/resnet*')")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
