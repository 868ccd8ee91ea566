"""``patseg convert-san CKPT --out FILE.safetensors``: a released SAN checkpoint as patseg weights."""

from __future__ import annotations

import argparse

from patseg.cli._common import add_overwrite_option


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert-san",
        help="convert a released SAN checkpoint (.pth) into patseg weights",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert a SAN release (MendelXu/SAN: san_vit_b_16.pth, san_vit_large_14.pth) into a patseg "
        ".safetensors file that carries every tensor, CLIP's included, and records its preset. The "
        "checkpoint is read with torch.load(weights_only=True); unknown, missing or mis-shaped keys "
        "are listed and nothing is written.",
        epilog="examples:\n"
        "  patseg convert-san san_vit_b_16.pth --out san_vitb16.safetensors\n"
        "  patseg segment photo.jpg --vocab 'sky,tree,road' --weights san_vitb16.safetensors --out seg/",
    )
    p.add_argument("checkpoint", help="SAN release file (detectron2-style {'model': state_dict})")
    p.add_argument("--out", required=True, help="output patseg weights file (.safetensors)")
    p.add_argument("--preset", help="san_vitb16 or san_vitl14 (default: told by the checkpoint's CLIP patch size)")
    add_overwrite_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from patseg.convert import convert_san_checkpoint
    from patseg.errors import UsageError
    from patseg.paths import check_writable, refuse_replacing

    if not str(args.out).endswith(".safetensors"):
        raise UsageError(f"--out must name a .safetensors file, got {args.out}")
    check_writable(args.out, is_dir=False)
    refuse_replacing([args.out], overwrite=args.overwrite)
    report = convert_san_checkpoint(args.checkpoint, args.out, preset=args.preset)
    dropped = ", ".join(report.dropped) or "nothing"
    print(f"wrote {report.out}: {report.tensors} tensors, preset {report.preset} (dropped {dropped})")
    return 0
