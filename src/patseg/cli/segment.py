"""``patseg segment``: segment images (or folders of images) with any vocabulary."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "segment", help="segment images with any list of class names",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Segment images with an open vocabulary. For every image NAME it writes NAME_labels.png "
                    "(class index per pixel; 16-bit when there are more than 256 classes), NAME_overlay.png "
                    "(colours and a legend) and NAME.json (the class names).",
        epilog="examples:\n"
               "  patseg segment photo.jpg --vocab 'sky,tree,road' --preset san_vitb16 \\\n"
               "      --clip-weights ViT-B-16.bin --out seg/\n"
               "  patseg segment photos/ --dataset ade20k_150 --weights san_vitb16.safetensors --out seg/")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    vocab = p.add_mutually_exclusive_group(required=True)
    vocab.add_argument("--vocab", help="comma-separated class names, e.g. 'sky,tree,road'")
    vocab.add_argument("--vocab-file", help="a text file with one class name per line (used verbatim)")
    vocab.add_argument("--dataset", help="use a benchmark's class names, e.g. ade20k_150, coco_stuff_171")
    p.add_argument("--preset", help="preset name; optional when --weights records its preset")
    p.add_argument("--weights", help="patseg weights (.safetensors) from training or `patseg convert-san`")
    p.add_argument("--clip-weights", help="local open_clip checkpoint for the CLIP towers")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--short-side", type=int, default=640, help="test resize of the short side (default 640)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.set_defaults(func=run)


def load_vocabulary(args: argparse.Namespace) -> list[str]:
    from patseg.cli import CLIError

    if args.vocab is not None:
        names = [v.strip() for v in args.vocab.split(",") if v.strip()]
    elif args.vocab_file is not None:
        path = Path(args.vocab_file)
        if not path.is_file():
            raise CLIError(f"vocabulary file not found: {path}")
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        from patseg.resources import load_class_names

        names = list(load_class_names(args.dataset))
    if not names:
        raise CLIError("the vocabulary is empty")
    return names


def load_model(args: argparse.Namespace):
    import torch

    from patseg.build import build_model
    from patseg.cli import CLIError

    if args.preset is None and args.weights is None:
        raise CLIError("give --preset, or --weights from a file that records its preset")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = build_model(args.preset, weights=args.weights, clip_weights=args.clip_weights)
    except (ValueError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from None
    return model.to(device).eval()


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from patseg.images import ImageReadError, expand_inputs, label_image, overlay_with_legend, read_rgb
    from patseg.atomic import atomic_path, atomic_write_json
    from patseg.predictor import Segmenter

    names = load_vocabulary(args)
    files = expand_inputs(args.images)
    if not files:
        from patseg.cli import CLIError

        raise CLIError("no images found in the given paths")
    segmenter = Segmenter(load_model(args), names, short_side=args.short_side)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    for path in tqdm(files, desc="segment", unit="img", disable=len(files) < 2):
        try:
            image = read_rgb(path)
        except ImageReadError as exc:
            print(f"patseg: skipped {exc}", file=sys.stderr)
            failed.append(str(path))
            continue
        labels = segmenter.predict(image)
        stem = path.stem
        with atomic_path(out / f"{stem}_labels.png") as tmp:
            label_image(labels).save(tmp, format="PNG")
        with atomic_path(out / f"{stem}_overlay.png") as tmp:
            overlay_with_legend(image, labels, names).save(tmp, format="PNG")
        atomic_write_json(out / f"{stem}.json", {"image": str(path), "classes": names,
                                                 "height": int(labels.shape[0]), "width": int(labels.shape[1])})
    done = len(files) - len(failed)
    print(f"segmented {done} of {len(files)} images into {out}" + (f"; {len(failed)} failed" if failed else ""))
    return 1 if failed else 0
