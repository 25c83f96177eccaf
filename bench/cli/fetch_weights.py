"""``bench-fetch-weights``: the pretrained weights every model of a command line would use, downloaded
into the standard caches (on a machine with network access, before a sweep on one without)."""

from __future__ import annotations

import sys

from bench.cli.commands import parser


def main(argv: list[str] | None = None) -> int:
    """``bench-fetch-weights [overrides...]``: download every weight file a command would need."""
    from bench.config import register_configs
    from bench.models import get_model_spec
    from bench.models.weights import fetch_weights
    from bench.preflight import plan_runs

    args = parser("bench-fetch-weights").parse_args(argv)
    register_configs()
    names = [a for a in args.overrides if "=" not in a]
    overrides = [a for a in args.overrides if "=" in a] + ([f"model={','.join(names)}"] if names else [])
    plan = plan_runs(["-m", *overrides])
    failed = 0
    for name in plan.models:
        if get_model_spec(name).source == "custom":
            print(f"  {name}: no pretrained weights (custom model), skipped")
            continue
        try:
            path = fetch_weights(name, plan.cfg.model.get("weights_tag"))
            print(f"  {name}: {path or 'Hugging Face cache'}")
        except Exception as exc:
            failed += 1
            print(f"  {name}: FAILED ({type(exc).__name__}: {exc})", file=sys.stderr)
    print(f"{len(plan.models) - failed} of {len(plan.models)} model(s) ready.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
