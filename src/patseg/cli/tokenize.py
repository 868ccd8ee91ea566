"""``patseg tokenize`` / ``patseg detokenize``: PAT's pixel branch as a stand-alone multi-scale tokenizer."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "tokenize", help="images -> integer code maps at four resolutions (.npz)",
        description="Encode images with PAT's pyramid tokenizer: early/mid/late codes (H/8, H/16, H/32 by "
                    "default) and latent codes (H/16). Images are resized so the short side is --size and both "
                    "sides are multiples of 32. The .npz holds arrays '{i}/{level}' and a JSON 'meta' entry.")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--weights", required=True, help="PAT weights (.safetensors or checkpoint folder)")
    p.add_argument("--preset", help="preset (default: recorded in the weights)")
    p.add_argument("--clip-weights", help="local open_clip checkpoint (for training checkpoints)")
    p.add_argument("--size", type=int, default=640, help="short side after resizing (default 640)")
    p.add_argument("--out", required=True, help="output .npz file")
    p.set_defaults(func=run_tokenize)
    d = subparsers.add_parser(
        "detokenize", help="code maps (.npz from tokenize) -> reconstructed images",
        description="Decode a tokens .npz back to images with PAT's decoder (no global tokens involved).")
    d.add_argument("tokens", help=".npz written by `patseg tokenize`")
    d.add_argument("--weights", help="PAT weights (default: the file recorded in the tokens' metadata)")
    d.add_argument("--preset", help="preset (default: recorded in the weights)")
    d.add_argument("--clip-weights", help="local open_clip checkpoint (for training checkpoints)")
    d.add_argument("--out", required=True, help="output folder for the PNGs")
    d.set_defaults(func=run_detokenize)


def _tokenizer(weights, preset, clip_weights):
    from patseg.cli import CLIError
    from patseg.tokenizer import PyramidTokenizer

    try:
        return PyramidTokenizer.from_checkpoint(weights, preset=preset, clip_weights=clip_weights)
    except (TypeError, ValueError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from None


def run_tokenize(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from patseg.images import ImageReadError, expand_inputs, read_rgb
    from patseg.predictor import test_resize_shape
    from patseg.tokenizer import save_pyramids

    tok = _tokenizer(args.weights, args.preset, args.clip_weights)
    pyramids, names, failed = [], [], 0
    for path in tqdm(expand_inputs(args.images), desc="tokenize", unit="img"):
        try:
            image = read_rgb(path)
        except ImageReadError as exc:
            print(f"patseg: skipped {exc}", file=sys.stderr)
            failed += 1
            continue
        h, w = test_resize_shape(*image.shape[:2], short=args.size)
        h, w = max(32, round(h / 32) * 32), max(32, round(w / 32) * 32)
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
        x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        pyramids.append(tok.encode(x.clamp(0, 1)))
        names.append(path.name)
    if pyramids:
        save_pyramids(Path(args.out), pyramids, {"images": names, "weights": str(args.weights),
                                                 "preset": tok.model.config.name})
        print(f"wrote {len(pyramids)} token pyramids to {args.out}")
    return 1 if failed or not pyramids else 0


def run_detokenize(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from patseg.cli import CLIError
    from patseg.atomic import atomic_path
    from patseg.tokenizer import load_pyramids

    try:
        pyramids, meta = load_pyramids(Path(args.tokens))
    except (OSError, ValueError, KeyError) as exc:
        raise CLIError(f"{args.tokens}: cannot read tokens ({exc})") from None
    tok = _tokenizer(args.weights or meta.get("weights"), args.preset, args.clip_weights)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, (pyramid, name) in enumerate(zip(pyramids, meta.get("images", []))):
        recon = tok.decode(pyramid)[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy()
        with atomic_path(out / f"{Path(name).stem}_recon.png") as tmp:
            Image.fromarray((recon * 255 + 0.5).astype(np.uint8)).save(tmp, "PNG")
    print(f"wrote {len(pyramids)} images to {out}")
    return 0
