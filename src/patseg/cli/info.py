"""``patseg info PRESET``: parameter counts with a per-module breakdown."""
from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "info", help="parameter counts of a preset (total, trainable, per module)",
        description="Build a preset with random weights and print its total and trainable parameter counts with a "
                    "per-module breakdown. SAN ViT-B/16 has 8,370,866 trainable parameters (SAN's own logs).")
    p.add_argument("preset", help="preset name (see `patseg info --list`) or a preset JSON file")
    p.add_argument("--json", action="store_true", help="print JSON: {total, trainable, modules: {name: {...}}}")
    p.add_argument("--depth", type=int, default=2, help="levels of the module tree to list (default 2)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. pat.vmf=false pat.stage_scales=[4,4,4]")
    p.set_defaults(func=run)


def parse_overrides(items) -> dict:
    import yaml

    from patseg.cli import CLIError

    out = {}
    for item in items:
        if "=" not in item:
            raise CLIError(f"override '{item}' is not KEY=VALUE")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def run(args: argparse.Namespace) -> int:
    from patseg.build import build_model
    from patseg.models.introspect import format_breakdown, parameter_breakdown

    model = build_model(args.preset, overrides=parse_overrides(args.set))
    info = parameter_breakdown(model, depth=args.depth)
    info["preset"] = model.config.name
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(format_breakdown(info, f"preset {model.config.name}"))
    return 0
