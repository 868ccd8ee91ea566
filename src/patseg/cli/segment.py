"""``patseg segment``: segment images (or folders of images) with any vocabulary."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from patseg.cli._common import (
    DEVICE_HELP,
    add_clip_weights_option,
    add_overwrite_option,
    add_set_option,
    build_from_args,
    device_name,
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
        "(img_jpg_2). Class names are used verbatim; blank or repeated names are refused.",
        epilog="examples:\n"
        "  patseg segment photo.jpg --vocab 'sky,tree,road' --preset san_vitb16 \\\n"
        "      --clip-weights ViT-B-16.bin --out seg/\n"
        "  patseg segment photos/ --dataset ade20k_150 --weights san_vitb16.safetensors --out seg/",
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
    from tqdm import tqdm

    from patseg.atomic import atomic_path, atomic_write_json
    from patseg.errors import ImageReadError, UsageError
    from patseg.images import expand_inputs, label_image, output_names, overlay_with_legend, read_rgb
    from patseg.paths import check_writable, refuse_replacing
    from patseg.predictor import Segmenter

    check_writable(args.out, is_dir=True)
    device = pick_device(args.device)
    names = load_vocabulary(args)
    files = expand_inputs(args.images)
    if not files:
        raise UsageError("no images found in the given paths")
    stems = output_names(files)
    targets = [Path(args.out) / f"{stem}{end}" for stem in stems for end in ("_labels.png", "_overlay.png", ".json")]
    refuse_replacing(targets, overwrite=args.overwrite)
    model = build_from_args(args, args.weights, warn_untrained=True).to(device).eval()
    segmenter = Segmenter(model, names, short_side=args.short_side)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    named = list(zip(files, stems))
    for path, stem in tqdm(named, desc="segment", unit="img", disable=len(files) < 2):
        try:
            image = read_rgb(path)
        except ImageReadError as exc:  # one unreadable file does not stop the others; the exit code says so
            logger.warning("skipped %s", exc)
            failed.append(str(path))
            continue
        labels = segmenter.predict(image)
        with atomic_path(out / f"{stem}_labels.png") as tmp:
            label_image(labels).save(tmp, format="PNG")
        with atomic_path(out / f"{stem}_overlay.png") as tmp:
            overlay_with_legend(image, labels, names).save(tmp, format="PNG")
        atomic_write_json(
            out / f"{stem}.json",
            {"image": str(path), "classes": names, "height": int(labels.shape[0]), "width": int(labels.shape[1])},
        )
    done = len(files) - len(failed)
    print(f"segmented {done} of {len(files)} images into {out}" + (f"; {len(failed)} failed" if failed else ""))
    return 1 if failed else 0
