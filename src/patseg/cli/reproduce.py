"""``patseg reproduce {table1,table2}``: train and evaluate every row of the paper's Table I or II over seeds."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from patseg.cli._common import add_overwrite_option, positive_int

EPILOG = """examples:
  patseg reproduce table1 --data datasets --clip-weights ViT-B-16.bin --evaclip-weights EVA02-B-16.bin \\
      --lpips-weights vgg16-397923af.pth --gpus 3
  patseg reproduce table2 --data datasets --evaclip-weights EVA02-B-16.bin --lpips-weights vgg16-397923af.pth \\
      --inception-weights pt_inception-2015-12-05-6726825d.pth --gpus 3
  patseg reproduce table2 --rows baseline,no_vmf --seeds 1 --dry-run      # the commands and their cost only
  patseg reproduce table1 --tiny --seeds 1 --out reproduce-tiny          # every row end to end on a CPU

Each row is a training config, configs/paper/<table>/<row>.yaml; its 'paper' section names the row and holds the
paper's numbers. For every row and seed k (0..K-1) the command trains into OUT/<table>/<row>/seed<k>/ with
torchrun (`patseg train CONFIG --set solver.seed=k ...`), then evaluates the final checkpoint zero-shot on PC-59,
A-150, PC-459 and A-847 (`patseg eval`, plus rFID for Table II), and writes OUT/<table>.md and OUT/<table>.json:
each cell the mean ± std over seeds beside the paper's value, for both mIoU rules.

Run it again at any time: a complete run (its last checkpoint is the final iteration) is skipped, an interrupted
one is resumed from its last checkpoint (`patseg train --resume`), an evaluation whose results file exists is
skipped. --overwrite instead deletes the selected runs and trains them again.

--dry-run prints every command and, per row, an estimate from one training step measured on this CPU (seconds to
minutes per full-size model, cached in OUT/estimates.json): GPU-hours = step FLOPs x global batch x iterations / (peak x
utilisation), and memory per GPU = weights, gradients and AdamW states + frozen weights + activations x per-GPU
batch. --tiny runs every row on san_tiny / pat_tiny with a random CLIP, on data it generates in OUT/tiny-data (the
prepared layouts of COCO-Stuff and the four benchmarks) with random Inception weights for rFID, a few steps each,
in this process: minutes on a CPU, to check the plumbing."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "reproduce",
        help="train and evaluate every row of the paper's Table I or II over seeds, and tabulate",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Reproduce the PAT paper's Table I (SAN and PAT, CLIP and EVA-CLIP, ViT-B/16) or Table II "
        "(the ablations of PAT EVA-CLIP): train each row on COCO-Stuff with the paper's recipe for several seeds, "
        "evaluate zero-shot, and write the table beside the paper's numbers.",
    )
    p.add_argument("table", choices=("table1", "table2"), help="which table of the paper")
    p.add_argument("--data", metavar="DIR", help="data root that `patseg prepare` filled (COCO-Stuff, the 4 sets)")
    p.add_argument("--clip-weights", metavar="FILE", help="OpenAI CLIP ViT-B/16 open_clip checkpoint (CLIP rows)")
    p.add_argument("--evaclip-weights", metavar="FILE", help="EVA02-CLIP-B/16 open_clip checkpoint (EVA-CLIP rows)")
    p.add_argument("--lpips-weights", metavar="FILE", help="torchvision's vgg16-397923af.pth (PAT rows)")
    p.add_argument(
        "--inception-weights", metavar="FILE", help="pt_inception-2015-12-05-6726825d.pth for rFID (Table II)"
    )
    p.add_argument("--gpus", type=positive_int, default=1, help="GPUs per run, one node (torchrun; default 1)")
    p.add_argument(
        "--seeds", type=positive_int, default=5, metavar="K", help="train seeds 0..K-1 (default 5, as the paper)"
    )
    p.add_argument("--rows", nargs="+", metavar="ROW", help="only these rows (config names, comma-separated or not)")
    p.add_argument("--configs", metavar="DIR", help="folder of the row configs (default: the repository's one)")
    p.add_argument("--out", default="reproduce", metavar="DIR", help="output folder (default: reproduce)")
    p.add_argument("--dry-run", action="store_true", help="print the commands and each row's cost; run nothing")
    p.add_argument("--tiny", action="store_true", help="every row on the tiny presets and generated data (CPU)")
    p.add_argument(
        "--gpu-tflops",
        type=positive_float(),
        default=71.0,
        help="peak TFLOP/s of one GPU for the estimate (default 71: RTX 3090, dense bf16 tensor cores)",
    )
    p.add_argument(
        "--mfu", type=positive_float(1.0), default=0.35, help="fraction of the peak a step sustains (default 0.35)"
    )
    add_overwrite_option(p)
    p.set_defaults(func=run)


def positive_float(maximum: float | None = None) -> Callable[[str], float]:
    """An argparse ``type=``: a number > 0 (and <= ``maximum``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
        if not value > 0 or (maximum is not None and value > maximum):
            bound = f" and at most {maximum:g}" if maximum is not None else ""
            raise argparse.ArgumentTypeError(f"must be above 0{bound}, got {text}")
        return value

    return parse


def run(args: argparse.Namespace) -> int:
    from patseg.reproduce.plan import Options
    from patseg.reproduce.rows import default_configs_dir, load_rows
    from patseg.reproduce.runner import GpuAssumptions, reproduce_table

    ids = [i.strip() for item in args.rows or () for i in item.split(",") if i.strip()]
    configs = Path(args.configs) if args.configs else default_configs_dir()
    rows = load_rows(configs, args.table, ids or None)
    files = {
        key: value
        for key, value in (
            ("clip", args.clip_weights),
            ("evaclip", args.evaclip_weights),
            ("lpips", args.lpips_weights),
            ("inception", args.inception_weights),
        )
        if value is not None
    }
    opts = Options(
        table=args.table,
        out=Path(args.out),
        seeds=tuple(range(args.seeds)),
        gpus=args.gpus,
        data=Path(args.data) if args.data else None,
        files=files,
        tiny=args.tiny,
        overwrite=args.overwrite,
    )
    invoke = None
    if args.tiny and not args.dry_run:
        from patseg.cli import main  # tiny runs are quick: each step runs in this process

        invoke = main
    assumptions = GpuAssumptions(gpu_tflops=args.gpu_tflops, mfu=args.mfu)
    reproduce_table(opts, rows, dry_run=args.dry_run, assumptions=assumptions, echo=print, invoke=invoke)
    return 0
