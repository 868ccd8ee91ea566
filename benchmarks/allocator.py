"""``predict`` with glibc's default allocation against ``patseg.allocator.keep_large_blocks``, in fresh processes.

    python benchmarks/allocator.py                       # san_vitb16 and pat_vitb16_clip at 640x640, 3 pairs
    python benchmarks/allocator.py --presets san_tiny --size 128 --pairs 2 --out /tmp/alloc   # a quick look

The policy is process-wide and its effect depends on what the process did before (memory kept or given back), so it
cannot be switched inside one process and timed fairly. Each measurement is a fresh Python process that applies the
policy (or not) first, builds the preset with random weights, runs ``Segmenter.predict`` once to warm up and then
``--calls`` more times, and reports the median time, its resident size before the first call and its peak
(``VmHWM``). The two policies take turns ``--pairs`` times per preset; the ratio of each pair and the median of
the pairs are reported.

Results go to ``OUT.json`` and ``OUT.md`` (default ``benchmarks/results/allocator``), written atomically; an
existing result is not replaced without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from provenance import git_commit, refuses_to_replace, write_results

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "allocator"
POLICIES = ("glibc default", "large blocks kept")


def child(policy: str, preset: str, size: int, calls: int, threads: int) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    from patseg.allocator import keep_large_blocks

    applied = keep_large_blocks() if policy == POLICIES[1] else False
    import torch

    from patseg.bench import make_segmenter, random_image
    from patseg.build import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    seg = make_segmenter(build_model(preset).eval(), 150, (size, size))
    image = random_image(size, size)

    def status_mb(field: str) -> float:
        line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
        return int(line.split()[1]) / 1024

    base = status_mb("VmRSS:")
    seg.predict(image)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        seg.predict(image)
        times.append((time.perf_counter() - start) * 1e3)
    return {
        "policy": policy,
        "applied": applied,
        "median_ms": statistics.median(times),
        "runs_ms": times,
        "base_mb": base,
        "peak_mb": status_mb("VmHWM:"),
    }


def run_child(policy: str, preset: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", policy, "--presets", preset, "--size", str(args.size)]
    cmd += ["--calls", str(args.calls), "--threads", str(args.threads)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Measured on {report['machine']} ({report['threads']} threads), torch {report['torch']}, random weights, "
        f"{report['size']}x{report['size']}, 150 classes; commit {report['commit']}.",
        "",
        f"Command: `{report['command']}`",
        "",
        "| preset | pair | glibc default ms | large blocks kept ms | speed-up | peak MB default / kept |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for preset, pairs in report["presets"].items():
        for i, (default, kept) in enumerate(pairs["runs"]):
            lines.append(
                f"| {preset} | {i + 1} | {default['median_ms']:.0f} | {kept['median_ms']:.0f} | "
                f"{default['median_ms'] / kept['median_ms']:.2f}x | {default['peak_mb']:.0f} / {kept['peak_mb']:.0f} |"
            )
        lines.append(f"| {preset} | median of pairs | | | **{pairs['median_speedup']:.2f}x** | |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["san_vitb16", "pat_vitb16_clip"], help="models to run")
    p.add_argument("--size", type=int, default=640, help="image side (640)")
    p.add_argument("--pairs", type=int, default=3, help="turns of the two policies per preset (3)")
    p.add_argument("--calls", type=int, default=4, help="timed predict calls per process, after a warm-up (4)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output path without suffix")
    p.add_argument("--overwrite", action="store_true", help="replace an existing result")
    p.add_argument("--child", choices=POLICIES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.presets[0], args.size, args.calls, args.threads)))
        return 0
    out_json, out_md = args.out.with_suffix(".json"), args.out.with_suffix(".md")
    if refuses_to_replace((out_json, out_md), args.overwrite):
        return 2
    import platform

    import torch

    from patseg.bench.measure import cpu_name

    report: dict[str, Any] = {
        "command": ("python benchmarks/allocator.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])).strip(),
        "machine": f"{cpu_name()} ({platform.machine()})",
        "torch": torch.__version__,
        "commit": git_commit(),
        "threads": args.threads,
        "size": args.size,
        "presets": {},
    }
    for preset in args.presets:
        runs = []
        for i in range(args.pairs):
            pair = [run_child(policy, preset, args) for policy in POLICIES]
            print(f"{preset} pair {i + 1}: {pair[0]['median_ms']:.0f} / {pair[1]['median_ms']:.0f} ms", flush=True)
            runs.append(pair)
        speedups = [default["median_ms"] / kept["median_ms"] for default, kept in runs]
        report["presets"][preset] = {"runs": runs, "speedups": speedups, "median_speedup": statistics.median(speedups)}
    text = markdown(report)
    print(text)
    write_results(out_json, out_md, report, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
