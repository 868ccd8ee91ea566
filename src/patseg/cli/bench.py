"""``patseg bench``: latency, peak memory and FLOPs of SAN and PAT, per stage and end to end, as a table and JSON."""

from __future__ import annotations

import argparse
import logging
import shlex
from pathlib import Path
from typing import Any

from patseg.cli._common import (
    DEVICE_HELP,
    add_overwrite_option,
    add_precision_option,
    add_set_option,
    device_name,
    int_at_least,
    model_overrides,
    pick_device,
)

logger = logging.getLogger(__name__)

SECTIONS = ("models", "sizes", "vocab", "train")
OPTIONAL_SECTIONS = ("compile",)  # asked for by name: compiling the full models takes minutes


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="measure latency, peak memory and FLOPs (per stage, sizes, vocabularies, training step)",
        description="Measure, in one process and side by side, the bare CLIP image encoder, SAN and PAT with random "
        "weights: a per-stage breakdown at 640x640, image sizes, vocabulary sizes (cached text "
        "embeddings) and a training step; prints a table and checks the speed and memory targets of "
        "docs/performance.md. Full-size runs take minutes on a CPU: --quick measures the tiny presets.",
    )
    p.add_argument("--quick", action="store_true", help="tiny presets at 128 px (seconds, for a smoke check)")
    p.add_argument(
        "--sections",
        nargs="+",
        choices=SECTIONS + OPTIONAL_SECTIONS,
        default=list(SECTIONS),
        help="what to measure (default: all but 'compile', which times predict with the model forward "
        "under torch.compile against eager)",
    )
    p.add_argument("--device", type=device_name, default=None, help=DEVICE_HELP)
    add_precision_option(p)
    p.add_argument("--threads", type=int_at_least(1), default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--warmup", type=int_at_least(0), default=None, help="untimed runs before timing (default 1)")
    p.add_argument(
        "--repeats", type=int_at_least(1), default=None, help="timed runs; the median is reported (default 3)"
    )
    add_set_option(
        p,
        "model config keys for every model measured (pat.* keys for the PAT models only), e.g. "
        "pat.vmf=false (values are YAML; repeatable)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON to this file")
    p.add_argument("--markdown", type=Path, default=None, help="also write the markdown table to this file")
    add_overwrite_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from patseg.atomic import atomic_write_json, atomic_write_text
    from patseg.bench import BenchPlan, run_suite
    from patseg.paths import check_writable, refuse_replacing

    for option, path in (("--json", args.json), ("--markdown", args.markdown)):
        if path is not None:  # found out now, not after minutes of measuring
            check_writable(path, is_dir=False, what=option)
            refuse_replacing([path], overwrite=args.overwrite, what=option)
    device = torch.device(pick_device(args.device))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    plan = BenchPlan.quick() if args.quick else BenchPlan()
    if args.warmup is not None:
        plan.warmup = args.warmup
    if args.repeats is not None:
        plan.repeats = args.repeats
    plan.precision = args.precision
    report = run_suite(plan, device, sections=args.sections, overrides=model_overrides(args), log=logger.info)
    report["command"] = command_line(args, device)
    table = format_markdown(report)
    print(table)
    if args.json is not None:
        atomic_write_json(args.json, report)
    if args.markdown is not None:
        atomic_write_text(args.markdown, table)
    return 0


def command_line(args: argparse.Namespace, device: Any) -> str:
    """The ``patseg bench`` command that reproduces this run (output files left out)."""
    parts = ["patseg", "bench"] + (["--quick"] if args.quick else []) + ["--device", str(device)]
    if args.precision != "fp32":
        parts += ["--precision", args.precision]
    if list(args.sections) != list(SECTIONS):
        parts += ["--sections", *args.sections]
    for flag in ("threads", "warmup", "repeats"):
        if getattr(args, flag) is not None:
            parts += [f"--{flag}", str(getattr(args, flag))]
    if args.set:
        parts += ["--set", *args.set]
    return " ".join(shlex.quote(p) for p in parts)


# ---------------------------------------------------------------------------------------------------- markdown
def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows), ""]


def _mb(value: Any) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def _rate(m: dict[str, Any] | None) -> str:
    """Achieved GFLOP/s and, in brackets, its percentage of the matrix-product probe."""
    if not m or m.get("gflops_per_s") is None:
        return ""
    return f"{m['gflops_per_s']:.0f} ({100 * m['of_probe']:.0f}%)"


def _case_rows(cases: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [
            c["preset"],
            f"{c['size'][0]}x{c['size'][1]}",
            c["classes"],
            f"{c['forward']['median_ms']:.0f}",
            f"{c['predict']['median_ms']:.0f}",
            f"{c['predict']['gflops']:.3g}",
            _rate(c["forward"]),
            _rate(c["predict"]),
            _mb(c["predict"]["peak_mb"]),
        ]
        for c in cases
    ]


def _kernel_lines(name: str, bound: dict[str, Any] | None) -> list[str]:
    """The kernel bound's most expensive op signatures, and any it could not replay."""
    if not bound:
        return []
    lines = [
        f"{name} kernel bound: {bound['median_ms']:.0f} ms over {bound['signatures']} op signatures "
        f"({bound['calls']} calls), each replayed alone; the most expensive:",
        "",
    ]
    rows = [[r["op"], r["shapes"], r["calls"], f"{r['ms']:.1f}", _rate(r)] for r in bound["rows"]]
    lines += _table(["op", "shapes", "calls", "ms", "GFLOP/s (% probe)"], rows)
    for s in bound["skipped"]:
        lines.append(f"- not replayed: {s['op']} ({s['shapes']}, {s['calls']} calls): {s['error']}")
    return lines + ([""] if bound["skipped"] else [])


def format_markdown(report: dict[str, Any]) -> str:
    """The report as markdown tables: environment, per-stage breakdown, sizes, vocabularies, training, targets."""
    env = report["environment"]
    lines = [
        (
            f"Measured on {env['device_name']} ({env['device']}, {env['threads']} threads, {env['precision']}), "
            f"torch {env['torch']}, random weights, batch 1. Times are medians in ms; peak memory is "
            f"{env['cpu_peak_memory'] if env['device'] == 'cpu' else 'the CUDA allocator peak'} in MB."
        ),
        "",
    ]
    if "command" in report:
        lines += [f"Command: `{report['command']}`", ""]
    probe = report.get("probe")
    if probe:
        side = report["plan"]["probe_size"]
        lines += [
            f"Matrix-product probe ({side}x{side} @ {side}x{side}, {env['precision']}, same process and threads): "
            f"{probe['gflops_per_s']:.0f} GFLOP/s. Each section times the probe in its own rounds, and every "
            "GFLOP/s below is given with its percentage of that section's probe.",
            "",
        ]
    models = report.get("models")
    if models:
        names = list(models)
        stages = list(dict.fromkeys(s for m in models.values() for s in m["stages"]))
        header = ["part"] + [f"{n} {what}" for what in ("ms", "GFLOPs", "GFLOP/s (% probe)") for n in names]
        rows = []

        def row(label: str, cells: list[dict[str, Any] | None]) -> list[Any]:
            return (
                [label]
                + [f"{c['median_ms']:.0f}" if c else "" for c in cells]
                + [f"{c['gflops']:.3g}" if c else "" for c in cells]
                + [_rate(c) for c in cells]
            )

        for s in stages:
            rows.append(row(s, [models[n]["stages"].get(s) for n in names]))
        blank = [""] * (2 * len(names))
        rows.append(["**sum of parts**"] + [f"{models[n]['stage_sum_ms']:.0f}" for n in names] + blank)
        rows.append(row("**predict, end to end**", [models[n]["end_to_end"] for n in names]))
        bounds = [models[n].get("kernel_bound") for n in names]
        if any(bounds):
            rows.append(row("kernel bound (dense ops alone)", bounds))
            ratios = [models[n].get("over_kernel_bound") for n in names]
            rows.append(["predict / kernel bound"] + [f"{r:.2f}" if r else "" for r in ratios] + blank)
        rows.append(row("scores, end to end", [models[n]["scores"] for n in names]))
        rows.append(["peak memory MB"] + [_mb(models[n]["end_to_end"]["peak_mb"]) for n in names] + blank)
        clip = report["clip_image_encoder"]
        size = report["plan"]["size"]
        lines += [
            (
                f"Per-part breakdown at {size[0]}x{size[1]}, {report['plan']['classes']} classes "
                f"(bare CLIP image encoder at SAN's CLIP input: {clip['median_ms']:.0f} ms, "
                f"{clip['gflops']:.3g} GFLOPs):"
            ),
            "",
        ]
        lines += _table(header, rows)
        for n in names:
            lines += _kernel_lines(n, models[n].get("kernel_bound"))
    case_header = ["preset", "image", "classes", "forward ms", "predict ms", "predict GFLOPs"]
    case_header += ["forward GFLOP/s (% probe)", "predict GFLOP/s (% probe)", "peak MB"]
    if report.get("sizes"):
        lines += ["Image sizes:", ""] + _table(case_header, _case_rows(report["sizes"] + [report["memory_case"]]))
    if report.get("vocabulary"):
        lines += ["Vocabulary sizes (cached text embeddings):", ""]
        lines += _table(case_header, _case_rows(report["vocabulary"]))
    if report.get("postprocess_regions"):
        rows = [
            [
                c["preset"],
                f"{c['size'][0]}x{c['size'][1]}",
                c["classes"],
                f"{c['bounded_ms']:.0f}",
                f"{c['dense_ms']:.0f}",
                "yes" if c["labels_equal"] else "**no**",
            ]
            for c in report["postprocess_regions"]
        ]
        lines += ["Post-processing alone on region-like predictions (bounded argmax vs every class scored):", ""]
        lines += _table(["preset", "image", "classes", "bounded ms", "dense ms", "same labels"], rows)
    if report.get("compile"):
        rows = [
            [
                c["preset"],
                f"{c['size'][0]}x{c['size'][1]}",
                c["classes"],
                f"{c['eager_ms']:.0f}",
                f"{c['compiled_ms']:.0f}",
                f"{c['compile_s']:.0f}",
                f"{100 * c['labels_agree']:.2f}",
            ]
            for c in report["compile"]
        ]
        lines += ["`predict` with the model forward under torch.compile (inductor, default mode):", ""]
        lines += _table(
            ["preset", "image", "classes", "eager ms", "compiled ms", "first call s", "same labels %"], rows
        )
    if report.get("train_step"):
        rows = [
            [t["preset"], t["size"], f"{t['median_ms']:.0f}", f"{t['gflops']:.3g}", _mb(t["peak_mb"])]
            for t in report["train_step"]
        ]
        lines += ["Training step (forward + backward + AdamW, batch 1):", ""]
        lines += _table(["preset", "crop", "ms", "GFLOPs", "peak MB"], rows)
    if report.get("targets"):
        rows = [
            [t["target"], t["value"], f"{t['kind']} {t['limit']}", "yes" if t["passed"] else "**no**", t["note"]]
            for t in report["targets"]
        ]
        lines += ["Targets (docs/performance.md):", ""]
        lines += _table(["target", "value", "limit", "met", "note"], rows)
    return "\n".join(lines)
