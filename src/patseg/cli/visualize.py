"""``patseg visualize IMAGE``: the paper's feature figures (Fig. 1, Fig. 6) for one image."""

from __future__ import annotations

import argparse
from pathlib import Path

from patseg.cli._common import (
    add_clip_weights_option,
    add_overwrite_option,
    add_set_option,
    build_from_args,
    int_at_least,
    require_pat,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "visualize",
        help="PCA / k-means / code-map figures of PAT's pyramid for one image",
        description="For each pyramid stage (early, mid, late) write STAGE.png with: the image, the PCA of the raw "
        "CLIP features (3 components as RGB), the PCA of the tokenized features, k-means clusters of "
        "the CLIP features and the token clusters (code assignment); plus codes_STAGE.png, the "
        "code-index map (8/16-bit PNG).",
    )
    p.add_argument("image", help="an image file")
    p.add_argument("--weights", required=True, help="PAT weights (.safetensors or checkpoint folder)")
    p.add_argument("--preset", help="preset (default: recorded in the weights)")
    add_clip_weights_option(p)
    add_set_option(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--size", type=int_at_least(32), default=640, help="short side the image is resized to (default 640; >= 32)"
    )
    p.add_argument("--clusters", type=int_at_least(1), default=8, help="k for the k-means panels (default 8)")
    add_overwrite_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from patseg.atomic import atomic_path
    from patseg.images import label_image, read_rgb
    from patseg.paths import check_writable, refuse_replacing
    from patseg.resize import resize_to_multiple
    from patseg.visualize import figure, stage_maps

    check_writable(args.out, is_dir=True)
    stages = ("early", "mid", "late")
    outputs = [Path(args.out) / f"{p}{s}.png" for s in stages for p in ("", "codes_")]
    refuse_replacing(outputs, overwrite=args.overwrite)
    image = read_rgb(args.image)
    model = build_from_args(args, args.weights)
    require_pat(model, "patseg visualize")
    x = resize_to_multiple(image, args.size)  # (1, 3, h, w) in [0, 1], sides multiples of 32, as the tokenizer
    shown = (x[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, maps in stage_maps(model, x, k=args.clusters).items():
        with atomic_path(out / f"{name}.png") as tmp:
            figure(shown, maps, f"{name} stage, grid {maps.codes.shape[0]}x{maps.codes.shape[1]}").save(tmp, "PNG")
        with atomic_path(out / f"codes_{name}.png") as tmp:
            label_image(maps.codes).save(tmp, "PNG")
    print(f"wrote {out}/{{early,mid,late}}.png and codes_*.png")
    return 0
