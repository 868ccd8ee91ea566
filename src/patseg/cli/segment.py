"""``patseg segment``: segment images (or folders of images) with any vocabulary."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from patseg.cli._common import (
    DEVICE_HELP,
    add_clip_weights_option,
    add_overwrite_option,
    add_precision_option,
    add_set_option,
    build_from_args,
    device_name,
    in_process_group,
    int_at_least,
    pick_device,
    positive_int,
)

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "segment",
        help="segment images with any list of class names",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Segment images with an open vocabulary. For every image NAME it writes NAME_labels.png "
        "(class index per pixel; 16-bit when there are more than 256 classes), NAME_overlay.png "
        "(colours and a legend) and NAME.json (the class names). NAME is the file name without its suffix; "
        "inputs that share it keep their suffix (img_bmp, img_tif) and, if still equal, get a number "
        "(img_jpg_2). Class names are used verbatim; blank or repeated names are refused. An unreadable file is "
        "named in a warning and skipped (exit code 1); the others are still written.",
        epilog="examples:\n"
        "  patseg segment photo.jpg --vocab 'sky,tree,road' --preset san_vitb16 \\\n"
        "      --clip-weights ViT-B-16.bin --out seg/\n"
        "  patseg segment photos/ --dataset ade20k_150 --weights san_vitb16.safetensors --out seg/\n"
        "  torchrun --standalone --nproc_per_node=2 -m patseg segment photos/ --dataset ade20k_150 \\\n"
        "      --weights san_vitb16.safetensors --out seg/\n"
        "\n"
        "many images: --workers processes decode the next images while the model runs, and images whose resized,\n"
        "padded input has the same size go through the model --batch-size at a time (the labels are those of one\n"
        "image at a time, up to floating-point rounding). Under torchrun every process segments its share of the\n"
        "files (on GPU LOCAL_RANK when CUDA is available, unless --device is given) and writes only that share's\n"
        "outputs; one process prints the summary, counting all of them.",
    )
    p.add_argument("images", nargs="+", help="image files or folders of images")
    vocab = p.add_mutually_exclusive_group(required=True)
    vocab.add_argument("--vocab", help="comma-separated class names, e.g. 'sky,tree,road'")
    vocab.add_argument("--vocab-file", help="a text file with one class name per line (used verbatim)")
    vocab.add_argument("--dataset", help="use a benchmark's class names, e.g. ade20k_150, coco_stuff_171")
    p.add_argument("--preset", help="preset name; optional when --weights records its preset")
    p.add_argument("--weights", help="patseg weights (.safetensors) from training or `patseg convert-san`")
    add_clip_weights_option(p)
    add_set_option(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--short-side", type=positive_int, default=640, help="test resize of the short side (default 640)")
    p.add_argument("--device", type=device_name, default=None, help=DEVICE_HELP)
    add_precision_option(p)
    p.add_argument(
        "--workers",
        type=int_at_least(0),
        default=2,
        help="processes that decode images ahead of the model (default 2; 0: decode in this process)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=4,
        help="images of one input size segmented in one forward pass (default 4; 1: one at a time)",
    )
    add_overwrite_option(p)
    p.set_defaults(func=run)


def load_vocabulary(args: argparse.Namespace) -> list[str]:
    """The class names of --vocab, --vocab-file or --dataset, in order; blank or repeated names raise UsageError
    naming their positions (items of --vocab, lines of --vocab-file)."""
    from patseg.errors import MissingFileError, UsageError
    from patseg.predictor import check_vocabulary

    if args.vocab is not None:
        return check_vocabulary(args.vocab.split(","), f"--vocab {args.vocab!r}")
    if args.vocab_file is not None:
        path = Path(args.vocab_file)
        if not path.is_file():
            raise MissingFileError(f"vocabulary file not found: {path}")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise UsageError(f"vocabulary file {path} is not UTF-8 text ({exc.reason}): save it as UTF-8") from None
        while lines and not lines[-1].strip():  # blank lines at the end of a file are layout, not classes
            lines.pop()
        return check_vocabulary(lines, f"vocabulary file {path} (one class per line)")
    from patseg.resources import load_class_names

    return check_vocabulary(load_class_names(args.dataset), f"--dataset {args.dataset}")


def run(args: argparse.Namespace) -> int:
    return in_process_group(_run, args)  # under torchrun, _run joins the process group


def _run(args: argparse.Namespace) -> int:
    import torch

    from patseg.distributed import all_gather_json, barrier, detect, init_distributed
    from patseg.errors import UsageError
    from patseg.folder import output_paths, refuse_replacing_on_all_ranks, segment_files, shard
    from patseg.images import expand_inputs, output_names
    from patseg.paths import check_writable
    from patseg.precision import check_precision
    from patseg.predictor import Segmenter

    check_writable(args.out, is_dir=True)
    info = detect()
    if info.enabled:  # collectives run on the rank's own device (nccl needs CUDA tensors); the model may sit elsewhere
        info, group_device = init_distributed()
        device = pick_device(args.device) if args.device is not None else str(group_device)
    else:
        group_device, device = torch.device("cpu"), pick_device(args.device)
    check_precision(args.precision, torch.device(device))  # before any model is built
    names = load_vocabulary(args)
    files = expand_inputs(args.images)
    if not files:
        raise UsageError("no images found in the given paths")
    stems = output_names(files)  # from the whole list on every rank: the names do not depend on the shares
    out = Path(args.out)
    targets = [path for stem in stems for path in output_paths(out, stem)]
    refuse_replacing_on_all_ranks(targets, overwrite=args.overwrite, device=group_device)
    model = build_from_args(args, args.weights, warn_untrained=True).to(device).eval()
    segmenter = Segmenter(model, names, short_side=args.short_side, precision=args.precision)
    out.mkdir(parents=True, exist_ok=True)
    mine = shard(range(len(files)), info.rank, info.world_size)
    failed = segment_files(
        segmenter,
        [files[i] for i in mine],
        [stems[i] for i in mine],
        out,
        workers=args.workers,
        batch_size=args.batch_size,
        progress=info.is_main and len(files) >= 2,
    )
    failed = [name for part in all_gather_json(failed, group_device) for name in part]
    if info.is_main:
        done = len(files) - len(failed)
        summary = f"segmented {done} of {len(files)} images into {out}" + (f"; {len(failed)} failed" if failed else "")
        print(summary, flush=True)
    # torchrun stops every process as soon as one exits with an error: none leaves before the summary is out.
    barrier()
    return 1 if failed else 0
