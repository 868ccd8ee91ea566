"""``patseg mini``: the OVSS-mini benchmark (SAN vs PAT, zero-shot on unseen concepts), on a CPU."""

from __future__ import annotations

import argparse
import math
import platform
import shlex
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from patseg.cli._common import add_overwrite_option, add_set_option, model_overrides
from patseg.config import keys_for_preset


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "mini",
        help="OVSS-mini: train SAN and PAT on a generated world, evaluate zero-shot on unseen concepts",
        description="Generate a procedural world of named concepts, pretrain (once, cached) a tiny CLIP on "
        "captioned scenes of every concept, train san_tiny and pat_tiny on the seen concepts only, and "
        "evaluate zero-shot on all concepts: mIoU and boundary IoU on seen / unseen / all, hIoU, and PAT's "
        "reconstruction (PSNR, mini-rFID) and codebook usage, mean +/- std over seeds. Seeds are paired (SAN "
        "and PAT see the same data), so the report gives PAT - SAN per metric with a 95%% confidence interval. "
        "A control (SAN with random text embeddings, first seed) shows the CLIP transfer at work. Writes "
        "results.md, results.json and figure.png to --out.",
    )
    p.add_argument("--quick", action="store_true", help="1 seed and shorter schedules (< 5 minutes on 2 cores)")
    p.add_argument(
        "--ablations",
        action="store_true",
        help="add every row of the paper's Table II (configs/paper/table2) on pat_tiny, in the paper's layout",
    )
    p.add_argument(
        "--world-seed",
        type=int,
        default=0,
        help="generate another world (concepts, colours, textures, unseen split); 0 is the README's world. A new "
        "world pretrains its own mini CLIP once (cached)",
    )
    p.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: 0-4, or 0 with --quick)")
    p.add_argument("--iters", type=int, help="segmentation training iterations per run")
    p.add_argument("--train-scenes", type=int, help="generated training scenes per run")
    p.add_argument("--val-scenes", type=int, help="generated evaluation scenes (all concepts)")
    p.add_argument("--clip-steps", type=int, help="mini CLIP pretraining steps when it is not cached yet")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, usually one per core)")
    add_set_option(
        p,
        "model config keys for every model trained (pat.* keys for the PAT models only), e.g. "
        "pat.vmf=false loss.vq_weight=1e-4 (values are YAML; repeatable)",
    )
    p.add_argument("--out", default="outputs/ovss-mini", help="output folder (default outputs/ovss-mini)")
    add_overwrite_option(p)
    p.set_defaults(func=run)


def _settings(args: argparse.Namespace) -> Any:
    from patseg.errors import UsageError
    from patseg.mini.benchmark import FULL, QUICK

    settings = QUICK if args.quick else FULL
    if args.seeds:
        settings = replace(settings, seeds=tuple(dict.fromkeys(args.seeds)))
    for field_name in ("iters", "train_scenes", "val_scenes", "clip_steps", "threads"):
        value = getattr(args, field_name)
        if value is not None:
            if value < 1:
                raise UsageError(f"--{field_name.replace('_', '-')} must be at least 1, got {value}")
            settings = replace(settings, **{field_name: value})
    return settings


def ablation_runs() -> list[Any]:
    """Table II's rows (the reproduction kit's configs) as OVSS-mini runs of pat_tiny with each row's overrides.

    The baseline row (no overrides) is the run named "PAT" itself, so it is not trained twice."""
    from patseg.mini.benchmark import MiniRun
    from patseg.reproduce.rows import default_configs_dir, load_rows, tiny_preset

    runs = []
    for row in load_rows(default_configs_dir(), "table2"):
        overrides = dict(row.cfg.model.overrides)
        name = f"Table II: {row.paper.label}" if overrides else "PAT"
        runs.append(MiniRun(name, tiny_preset(row.cfg.model.preset), overrides, group=row.paper.group))
    return runs


def run(args: argparse.Namespace) -> int:
    import torch

    from patseg.atomic import atomic_path, atomic_write_json, atomic_write_text
    from patseg.mini import benchmark
    from patseg.mini.figure import make_figure
    from patseg.mini.world import make_world
    from patseg.paths import check_writable, refuse_replacing

    check_writable(args.out, is_dir=True)
    out = Path(args.out)
    refuse_replacing([out / n for n in ("results.json", "results.md", "figure.png", "runs")], overwrite=args.overwrite)
    settings = _settings(args)
    world = make_world(args.world_seed)
    overrides = model_overrides(args)
    table2 = ablation_runs() if args.ablations else []
    runs = tuple(
        replace(r, overrides={**keys_for_preset(r.preset, overrides), **r.overrides})  # a run's own keys win
        for r in (*benchmark.DEFAULT_RUNS, *(r for r in table2 if r.name != "PAT"))
    )
    figure_runs = {r.name for r in benchmark.DEFAULT_RUNS if not r.random_text}  # SAN and PAT
    out.mkdir(parents=True, exist_ok=True)
    figure_models = {}

    def keep_for_figure(run_: Any, seed: int, model: Any) -> None:
        if seed == settings.seeds[0] and run_.name in figure_runs:
            figure_models[run_.name] = model.eval()

    start = time.perf_counter()
    report = benchmark.run_benchmark(settings, out, runs, world=world, on_model=keep_for_figure)
    seconds = time.perf_counter() - start
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    text = report_text(report, settings, table2, seconds, machine, command_line(args))
    print("\n" + text)
    report.update(wall_seconds=round(seconds, 1), machine=machine)
    atomic_write_json(out / "results.json", _finite(report))
    atomic_write_text(out / "results.md", text)
    if figure_models:
        with atomic_path(out / "figure.png") as tmp:
            make_figure(world, settings.image_size, figure_models).save(tmp, "PNG")
    print(f"wrote {out}/results.md, results.json" + (", figure.png" if figure_models else ""))
    return 0


def report_text(report: dict, settings: Any, ablations: list[Any], seconds: float, machine: str, command: str) -> str:
    """results.md: the main table, the paired PAT - SAN sentences, PAT's tokenizer, the ablations, how it ran."""
    from patseg.mini.report import ablation_table, format_table, paired_comparison, summarize, tokenizer_table

    results = report["results"]
    report["summary"] = {k: {m: list(v) for m, v in d.items()} for k, d in summarize(results).items()}
    parts = [
        f"OVSS-mini (world {report['world']}), mIoU and boundary IoU % (mean ± std over seeds "
        f"{list(settings.seeds)}; the control ran the first seed), {settings.iters} iterations per run",
        format_table(summarize(results)),
    ]
    sentences = paired_comparison(results)
    if sentences:
        parts.append(
            "Paired seeds (same data for SAN and PAT), PAT − SAN:\n\n" + "\n".join(f"- {s}" for s in sentences)
        )
    tokenizers = [name for name in results if name == "PAT" or name.startswith("Table II")]
    if any("tokenizer" in row for name in tokenizers for row in results[name]):
        parts.append("PAT's tokenizer on the evaluation scenes:\n\n" + tokenizer_table(results, ["PAT"]))
    if ablations:
        layout = [
            (r.group, r.name.removeprefix("Table II: ") if r.name != "PAT" else "Baseline", r.name) for r in ablations
        ]
        parts.append("Table II at mini scale (pat_tiny):\n\n" + ablation_table(results, layout))
    parts.append(f"machine: {machine}; command: `{command}`; wall time {seconds / 60:.1f} min")
    return "\n\n".join(parts) + "\n"


def command_line(args: argparse.Namespace) -> str:
    """The ``patseg mini`` command that reproduces this run: every option that was given, shell-quoted, except
    ``--out`` (results.md sits in that folder, and result files hold no path of this machine)."""
    words = ["patseg", "mini"] + (["--quick"] if args.quick else []) + (["--ablations"] if args.ablations else [])
    if args.world_seed:
        words += ["--world-seed", str(args.world_seed)]
    if args.seeds:
        words += ["--seeds", *map(str, args.seeds)]
    for name in ("iters", "train_scenes", "val_scenes", "clip_steps", "threads"):
        if getattr(args, name) is not None:
            words += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if args.set:
        words += ["--set", *args.set]
    return shlex.join(words)


def _finite(obj):
    """NaN (per-class IoU of classes absent from the ground truth) -> null, so the JSON is standard."""
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
