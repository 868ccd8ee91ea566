"""``patseg info PRESET``: parameter counts with a per-module breakdown."""

from __future__ import annotations

import argparse
import json

from patseg.cli._common import add_set_option, model_overrides

EPILOG = """examples:
  patseg info san_tiny
  patseg info pat_tiny --json --set pat.vmf=false
  patseg info pat_tiny --set 'pat.stage_scales=[4,4,4]' --depth 1"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from patseg.config import list_presets  # reads the preset folder; no torch

    p = subparsers.add_parser(
        "info",
        help="parameter counts of a preset (total, trainable, per module)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build a preset with random weights and print its total and trainable parameter counts with a "
        "per-module breakdown. SAN ViT-B/16 has 8,370,866 trainable parameters (SAN's own logs).",
    )
    p.add_argument("preset", help=f"preset name ({', '.join(list_presets())}) or a preset JSON file")
    p.add_argument("--json", action="store_true", help="print JSON: {total, trainable, modules: {name: {...}}}")
    p.add_argument("--depth", type=int, default=2, help="levels of the module tree to list (default 2)")
    add_set_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from patseg.build import build_model
    from patseg.models.introspect import format_breakdown, parameter_breakdown

    model = build_model(args.preset, overrides=model_overrides(args))
    info = parameter_breakdown(model, depth=args.depth)
    info["preset"] = model.config.name
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(format_breakdown(info, f"preset {model.config.name}"))
    return 0
