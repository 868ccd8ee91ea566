"""Run ``patseg bench`` and keep its results under ``benchmarks/results/``.

    python benchmarks/bench_inference.py --threads 1                      # everything, full presets (long on CPU)
    python benchmarks/bench_inference.py --threads 1 --sections models    # one section
    python benchmarks/bench_inference.py --quick                          # tiny presets, seconds
    python benchmarks/bench_inference.py --threads 1 --sections compile   # torch.compile vs eager (minutes)
    python benchmarks/bench_inference.py --merge cpu                      # one table from the per-section runs

Each run writes ``<device>-<full|quick>-<sections>.json`` (the whole report, with the command) and a markdown
table next to it; ``README_table.md`` is the table of the last full run of all default sections, or of the per-section
full runs merged by ``--merge DEVICE`` (targets recomputed on the merged report).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from patseg.atomic import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from patseg.cli import main as patseg_main
    from patseg.cli.bench import OPTIONAL_SECTIONS, SECTIONS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS + OPTIONAL_SECTIONS, default=list(SECTIONS))
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--merge", metavar="DEVICE", default=None, help="merge the per-section full runs of DEVICE")
    parser.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run")
    args = parser.parse_args()
    if args.merge:
        return merge(args.merge)

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    stem = f"{device}-{'quick' if args.quick else 'full'}-{'-'.join(args.sections)}"
    argv = [
        "bench",
        "--device",
        device,
        "--sections",
        *args.sections,
        "--json",
        str(RESULTS / f"{stem}.json"),
        "--markdown",
        str(RESULTS / f"{stem}.md"),
    ]
    argv += ["--quick"] if args.quick else []
    argv += ["--overwrite"] if args.overwrite else []
    for flag in ("threads", "warmup", "repeats"):
        if getattr(args, flag) is not None:
            argv += [f"--{flag}", str(getattr(args, flag))]
    code = patseg_main(argv)
    if code == 0 and not args.quick and set(args.sections) >= set(SECTIONS):
        atomic_write_text(RESULTS / "README_table.md", (RESULTS / f"{stem}.md").read_text())
    return code


def merge(device: str) -> int:
    """One report from ``<device>-full-<section>.json`` files: sections, commands, targets over the union."""
    from patseg.bench import BenchPlan, check_targets
    from patseg.cli.bench import OPTIONAL_SECTIONS, SECTIONS, format_markdown

    report: dict = {}
    commands = []
    for section in SECTIONS + OPTIONAL_SECTIONS:
        path = RESULTS / f"{device}-full-{section}.json"
        if path.is_file():
            part = json.loads(path.read_text())
            commands.append(part.pop("command"))
            part.pop("targets")
            report.update(part)
    if not commands:
        print(f"no {device}-full-<section>.json files in {RESULTS}", file=sys.stderr)
        return 1
    report["targets"] = check_targets(report, BenchPlan())
    report["command"] = " ; ".join(commands)
    atomic_write_text(RESULTS / f"{device}-full-merged.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(RESULTS / "README_table.md", format_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
