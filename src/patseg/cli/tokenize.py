"""``patseg tokenize`` / ``patseg detokenize``: PAT's pixel branch as a stand-alone multi-scale tokenizer."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from patseg.cli._common import (
    add_clip_weights_option,
    add_overwrite_option,
    add_set_option,
    build_from_args,
    int_at_least,
    model_overrides,
    require_pat,
)

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tokenize",
        help="images -> integer code maps at four resolutions (.npz)",
        description="Encode images with PAT's pyramid tokenizer: early/mid/late codes (H/8, H/16, H/32 by "
        "default) and latent codes (H/16). Images are resized so the short side is --size and both "
        "sides are multiples of 32. The .npz holds arrays '{i}/{level}' and a JSON 'meta' entry.",
    )
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--weights", required=True, help="PAT weights (.safetensors or checkpoint folder)")
    p.add_argument("--preset", help="preset (default: recorded in the weights)")
    add_clip_weights_option(p)
    add_set_option(p)
    p.add_argument(
        "--size", type=int_at_least(32), default=640, help="short side after resizing (default 640; at least 32)"
    )
    p.add_argument("--out", required=True, help="output .npz file")
    add_overwrite_option(p)
    p.set_defaults(func=run_tokenize)
    d = subparsers.add_parser(
        "detokenize",
        help="code maps (.npz from tokenize) -> reconstructed images",
        description="Decode a tokens .npz back to images with PAT's decoder (no global tokens involved). The "
        "model is rebuilt as tokenize built it: weights file, preset and --set keys recorded in the "
        ".npz, unless given here.",
    )
    d.add_argument("tokens", help=".npz written by `patseg tokenize`")
    d.add_argument("--weights", help="PAT weights (default: the file recorded in the tokens' metadata)")
    d.add_argument("--preset", help="preset (default: recorded in the weights)")
    add_clip_weights_option(d)
    add_set_option(d, "model config keys on top of those recorded by tokenize (values are YAML; repeatable)")
    d.add_argument("--out", required=True, help="output folder for the PNGs")
    add_overwrite_option(d)
    d.set_defaults(func=run_detokenize)


def _tokenizer(args: argparse.Namespace, weights: str | None, overrides: dict[str, Any]) -> Any:
    from patseg.tokenizer import PyramidTokenizer

    model = build_from_args(args, weights, overrides=overrides)
    require_pat(model, f"patseg {args.command}")
    return PyramidTokenizer(model)


def run_tokenize(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from patseg.errors import ImageReadError
    from patseg.images import expand_inputs, read_rgb
    from patseg.paths import check_writable, refuse_replacing
    from patseg.tokenizer import save_pyramids

    check_writable(args.out, is_dir=False)
    refuse_replacing([args.out], overwrite=args.overwrite)
    overrides = model_overrides(args)
    tok = _tokenizer(args, args.weights, overrides)
    pyramids, names, failed = [], [], 0
    for path in tqdm(expand_inputs(args.images), desc="tokenize", unit="img"):
        try:
            image = read_rgb(path)
        except ImageReadError as exc:  # one unreadable file does not stop the others; the exit code says so
            logger.warning("skipped %s", exc)
            failed += 1
            continue
        pyramids.append(tok.encode_image(image, args.size))
        names.append(path.name)
    if pyramids:
        save_pyramids(
            Path(args.out),
            pyramids,
            {"images": names, "weights": str(args.weights), "preset": tok.model.config.name, "overrides": overrides},
        )
        print(f"wrote {len(pyramids)} token pyramids to {args.out}")
    return 1 if failed or not pyramids else 0


def run_detokenize(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from patseg.atomic import atomic_path
    from patseg.paths import check_writable, refuse_replacing
    from patseg.tokenizer import load_pyramids

    check_writable(args.out, is_dir=True)
    pyramids, meta = load_pyramids(Path(args.tokens))
    names = [f"{Path(name).stem}_recon.png" for name in meta.get("images", [])]
    refuse_replacing([Path(args.out) / n for n in names], overwrite=args.overwrite)
    overrides = {**meta.get("overrides", {}), **model_overrides(args)}
    tok = _tokenizer(args, args.weights or meta.get("weights"), overrides)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for pyramid, name in zip(pyramids, meta.get("images", [])):
        recon = tok.decode(pyramid)[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy()
        with atomic_path(out / f"{Path(name).stem}_recon.png") as tmp:
            Image.fromarray((recon * 255 + 0.5).astype(np.uint8)).save(tmp, "PNG")
    print(f"wrote {len(pyramids)} images to {out}")
    return 0
