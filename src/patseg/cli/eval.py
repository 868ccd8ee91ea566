"""``patseg eval``: zero-shot evaluation on the OVSS benchmarks (and PAT's rFID), printed as a Table-I-style table."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from patseg.cli._common import (
    add_clip_weights_option,
    add_overwrite_option,
    add_precision_option,
    add_set_option,
    in_process_group,
    model_overrides,
    positive_int,
)

EPILOG = """examples:
  patseg eval --weights san_vitb16.safetensors --datasets pcontext_59,ade20k_150,pcontext_459,ade20k_847
  patseg eval --config configs/pat_vitb16_clip.yaml --weights output/ckpt_0120000 --clip-weights ViT-B-16.bin
  patseg eval --preset pat_vitb16_clip --weights s0/ckpt s1/ckpt s2/ckpt --seeds 0 1 2 --out results/pat
  patseg eval --weights pat.safetensors --rfid --inception-weights pt_inception-2015-12-05-6726825d.pth
  torchrun --standalone --nproc_per_node=4 -m patseg eval --weights output/ckpt_0120000 --clip-weights ViT-B-16.bin
Under torchrun each process evaluates its share of every set on its own GPU; metrics are summed over processes and
process 0 prints and writes the results.
Both mIoU rules are reported: classes present in the ground truth (current detectron2, SAN's and CAT-Seg's logs)
and classes present in ground truth or prediction (detectron2 v0.6, mmseg, the SAN paper). --rfid adds PAT's
reconstruction FID on the COCO-Stuff validation images (short side --short-side, centre crop of that size)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="zero-shot evaluation on the OVSS benchmarks",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Evaluate one or several checkpoints (one per training seed) on registered validation sets: "
        "short side 640, whole image, class names verbatim with the 14 vild templates.",
    )
    p.add_argument("--config", help="training YAML: supplies preset, model keys, CLIP weights and data root")
    p.add_argument("--preset", help="preset name (default: recorded in the weights file)")
    p.add_argument("--weights", nargs="+", required=True, help="weights files or checkpoint folders")
    p.add_argument("--seeds", nargs="*", type=int, help="training seed of each --weights entry (for mean +/- std)")
    add_clip_weights_option(p)
    add_set_option(p, "model config keys on top of the --config ones, e.g. pat.vmf=false (values are YAML; repeatable)")
    p.add_argument(
        "--datasets",
        default="pcontext_59,ade20k_150,pcontext_459,ade20k_847",
        help="comma-separated dataset names (default: the four Table I sets)",
    )
    p.add_argument("--root", help="data root (default $PATSEG_DATA or ./datasets)")
    p.add_argument("--limit", type=positive_int, help="evaluate only the first N images of each set (quick check)")
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="accept sets whose image count differs from the official one (subsets); warns",
    )
    p.add_argument("--short-side", type=positive_int, default=640, help="test resize of the short side (default 640)")
    add_precision_option(p)
    p.add_argument("--rfid", action="store_true", help="also compute the reconstruction FID (PAT models only)")
    p.add_argument(
        "--inception-weights",
        metavar="FILE",
        help="the FID Inception-v3 weights (pt_inception-2015-12-05-6726825d.pth); needed by --rfid",
    )
    p.add_argument("--name", help="row label in the table (default: the preset name)")
    p.add_argument("--out", help="write OUT.json/OUT.md tables and OUT_seed{N}.json results")
    add_overwrite_option(p)
    p.set_defaults(func=run)


def _settings(args: argparse.Namespace) -> tuple[str | None, dict[str, Any], str | None, str | None]:
    """(preset, model overrides, CLIP file, data root): the options, falling back on the --config YAML."""
    preset, overrides, clip, root = args.preset, {}, args.clip_weights, args.root
    if args.config:
        from patseg.engine.train_config import load_train_config

        cfg = load_train_config(args.config)
        preset = preset or cfg.model.preset
        overrides = dict(cfg.model.overrides)
        clip = clip or cfg.model.clip_weights
        root = root or cfg.data.root
    return preset, {**overrides, **model_overrides(args)}, clip, root


def _check_options(args: argparse.Namespace) -> list[int]:
    """The seed of each --weights entry; options that do not fit raise before any work starts."""
    from patseg.errors import MissingFileError, UsageError
    from patseg.paths import check_writable, refuse_replacing

    seeds = args.seeds if args.seeds else list(range(len(args.weights)))
    if len(seeds) != len(args.weights):
        raise UsageError(f"--seeds has {len(seeds)} entries for {len(args.weights)} --weights")
    if args.out:  # OUT.json, OUT.md and OUT_seed{N}.json, all in one folder
        check_writable(f"{args.out}.json", is_dir=False)
        outputs = [f"{args.out}.json", f"{args.out}.md"] + [f"{args.out}_seed{s}.json" for s in seeds]
        refuse_replacing(outputs, overwrite=args.overwrite)
    if args.rfid and not args.inception_weights:
        raise UsageError("--rfid needs --inception-weights FILE (the FID Inception-v3 weights)")
    if args.inception_weights and not args.rfid:
        raise UsageError("--inception-weights is only used with --rfid")
    if args.rfid and args.precision != "fp32":  # the FID network and PAT's reconstruction run in float32 only
        raise UsageError(f"--rfid runs in fp32 only: drop --precision {args.precision}, or compute rFID separately")
    if args.rfid and not Path(args.inception_weights).is_file():  # found out before hours of evaluation
        raise MissingFileError(f"Inception weights file not found: {args.inception_weights}")
    return seeds


def _device() -> tuple[Any, bool]:
    """(device, whether this process writes the outputs). Under torchrun every rank evaluates its shard of each set
    on its own GPU and the metrics are all-reduced, so the process group is joined here; rank 0 writes."""
    from patseg.cli._common import pick_device
    from patseg.distributed import detect, init_distributed

    if not detect().enabled:
        return pick_device(None), True
    info, device = init_distributed()
    return device, info.is_main


def run(args: argparse.Namespace) -> int:
    return in_process_group(_run, args)  # under torchrun, _run joins the process group


def _run(args: argparse.Namespace) -> int:
    import torch

    from patseg.atomic import atomic_write_json, atomic_write_text
    from patseg.build import build_model
    from patseg.cli._common import require_pat
    from patseg.evaluation.loop import evaluate_datasets, evaluate_rfid
    from patseg.evaluation.report import aggregate, format_markdown, table_json, write_results
    from patseg.precision import check_precision

    seeds = _check_options(args)
    names = [d.strip() for d in args.datasets.split(",") if d.strip()]
    preset, overrides, clip, root = _settings(args)
    device, writes = _device()
    check_precision(args.precision, torch.device(device))  # before any model is built
    records = []
    for seed, weights in zip(seeds, args.weights):
        model = build_model(preset, weights=weights, clip_weights=clip, overrides=overrides).to(device)
        if args.rfid:
            require_pat(model, "--rfid")
        label = args.name or model.config.name
        record: dict[str, Any] = {
            "model": label,
            "seed": seed,
            "meta": {"weights": str(weights), "limit": args.limit, "precision": args.precision},
            "datasets": evaluate_datasets(
                model,
                names,
                root=root,
                limit=args.limit,
                allow_partial=args.allow_partial,
                short_side=args.short_side,
                precision=args.precision,
            ),
        }
        if args.rfid:
            record["rfid"] = evaluate_rfid(
                model,
                inception_weights=args.inception_weights,
                root=root,
                limit=args.limit,
                allow_partial=args.allow_partial,
                size=args.short_side,
            )
            if writes:
                rfid = record["rfid"]
                print(f"{label} (seed {seed}): rFID = {rfid['value']:.2f} (N = {rfid['num_images']})")
        records.append(record)
        if args.out and writes:
            write_results(f"{args.out}_seed{seed}.json", record)
    if not writes:
        return 0
    for metric in ("mIoU", "mIoU_gt_or_pred"):
        print(f"\n{metric} (%)\n" + format_markdown(aggregate(records, metric), metric))
    if args.out:
        tables = {m: table_json(aggregate(records, m), m) for m in ("mIoU", "mIoU_gt_or_pred")}
        atomic_write_json(Path(f"{args.out}.json"), tables)
        atomic_write_text(
            Path(f"{args.out}.md"),
            "\n\n".join(f"{m} (%)\n\n" + format_markdown(aggregate(records, m), m) for m in tables),
        )
    return 0
