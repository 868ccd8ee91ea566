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
        "evaluate zero-shot on all concepts: mIoU seen / unseen / all and hIoU, mean +/- std over "
        "seeds. A control (SAN with random text embeddings) shows the CLIP transfer at work. Writes "
        "results.md, results.json and figure.png to --out.",
    )
    p.add_argument("--quick", action="store_true", help="1 seed and shorter schedules (< 5 minutes on 2 cores)")
    p.add_argument(
        "--ablations", action="store_true", help="add PAT's Table II switches vmf, token_mixer, pixel_residual"
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


def run(args: argparse.Namespace) -> int:
    import torch

    from patseg.atomic import atomic_path, atomic_write_json, atomic_write_text
    from patseg.errors import UsageError
    from patseg.mini.benchmark import (
        ABLATION_RUNS,
        DEFAULT_RUNS,
        FULL,
        QUICK,
        format_table,
        make_figure,
        run_benchmark,
        summarize,
    )
    from patseg.mini.world import WorldConfig
    from patseg.paths import check_writable, refuse_replacing

    check_writable(args.out, is_dir=True)
    out_dir = Path(args.out)
    earlier = [out_dir / n for n in ("results.json", "results.md", "figure.png", "runs")]
    refuse_replacing(earlier, overwrite=args.overwrite)
    settings = QUICK if args.quick else FULL
    if args.seeds:
        settings = replace(settings, seeds=tuple(args.seeds))
    for field_name in ("iters", "train_scenes", "val_scenes", "clip_steps", "threads"):
        value = getattr(args, field_name)
        if value is not None:
            if value < 1:
                raise UsageError(f"--{field_name.replace('_', '-')} must be at least 1, got {value}")
            settings = replace(settings, **{field_name: value})
    overrides = model_overrides(args)
    runs = tuple(
        replace(r, overrides={**keys_for_preset(r.preset, overrides), **r.overrides})  # ablations win
        for r in DEFAULT_RUNS + (ABLATION_RUNS if args.ablations else ())
    )
    figure_runs = {r.name for r in DEFAULT_RUNS if not r.random_text}  # SAN and PAT, without ablations
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figure_models = {}

    def keep_for_figure(run_: Any, seed: int, model: Any) -> None:
        if seed == settings.seeds[0] and run_.name in figure_runs:
            figure_models[run_.name] = model.eval()

    start = time.perf_counter()
    report = run_benchmark(settings, out, runs, on_model=keep_for_figure)
    seconds = time.perf_counter() - start
    summary = summarize(report["results"])
    table = format_table(summary)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    command = command_line(args)
    text = (
        f"OVSS-mini ({report['world']}), mIoU % (mean ± std over seeds {list(settings.seeds)}), "
        f"{settings.iters} iterations per run\n\n{table}\n\n"
        f"machine: {machine}; command: `{command}`; wall time {seconds / 60:.1f} min\n"
    )
    print("\n" + text)
    report["summary"] = {k: {m: list(v) for m, v in d.items()} for k, d in summary.items()}
    report["wall_seconds"] = round(seconds, 1)
    report["machine"] = machine
    atomic_write_json(out / "results.json", _finite(report))
    atomic_write_text(out / "results.md", text)
    if figure_models:
        with atomic_path(out / "figure.png") as tmp:
            make_figure(WorldConfig(), settings, figure_models).save(tmp, "PNG")
    print(f"wrote {out}/results.md, results.json" + (", figure.png" if figure_models else ""))
    return 0


def command_line(args: argparse.Namespace) -> str:
    """The ``patseg mini`` command that reproduces this run: every option that was given, shell-quoted, except
    ``--out`` (results.md sits in that folder, and result files hold no path of this machine)."""
    words = ["patseg", "mini"] + (["--quick"] if args.quick else []) + (["--ablations"] if args.ablations else [])
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
