"""Which pixel path for PAT's literal (``tokens``) decoder: plain SPADE or SPADE's residual block?

Trains ``pat_tiny`` on OVSS-mini (the quick settings unless told otherwise) once per variant and seed (the two
choices of ``pat.spade_block``, and the former ``pixels`` decoder on CLIP's grid for comparison), then measures the
reconstruction (PSNR and L1 of the tokenizer's round trip on the validation scenes) and the zero-shot mIoU.
Results go to ``benchmarks/results/spade-block.{json,md}``.

    python benchmarks/spade_block.py --seeds 0 1 --iters 250 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from patseg.atomic import atomic_write_text
from patseg.evaluation.rfid import reconstruct
from patseg.mini.benchmark import QUICK, MiniRun, run_one
from patseg.mini.clip_pretrain import load_or_pretrain_mini_clip
from patseg.mini.evaluate import VAL_SEED
from patseg.mini.scenes import SyntheticSegmentation
from patseg.mini.world import WorldConfig

RESULTS = Path(__file__).parent / "results"
# The two pixel paths of the literal decoder, and the former reading for comparison.
VARIANTS = {
    "norm": {"pat.spade_block": "norm"},
    "resblock": {"pat.spade_block": "resblock"},
    "pixels-clip": {"pat.decoder": "pixels", "pat.pyramid_base": "clip"},
}


@torch.inference_mode()
def reconstruction_quality(model, world: WorldConfig, size: int, scenes: int) -> dict[str, float]:
    """Mean PSNR (dB) and L1 of the tokenizer round trip over ``scenes`` validation scenes, images in [0, 1]."""
    val = SyntheticSegmentation(world, "val", scenes, size, VAL_SEED)
    model.eval()
    psnr, l1 = [], []
    for i in range(0, scenes, 16):
        images = torch.stack([val[j]["image"] for j in range(i, min(i + 16, scenes))]).float() / 255
        recon = reconstruct(model, images).clamp(0, 1)
        mse = (recon - images).pow(2).mean(dim=(1, 2, 3))
        psnr += (10 * torch.log10(1 / mse.clamp_min(1e-10))).tolist()
        l1 += (recon - images).abs().mean(dim=(1, 2, 3)).tolist()
    return {"psnr": sum(psnr) / len(psnr), "l1": sum(l1) / len(l1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--iters", type=int, default=QUICK.iters)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--blocks", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    world = WorldConfig()
    settings = replace(QUICK, iters=args.iters, threads=args.threads)
    clip = load_or_pretrain_mini_clip(world, steps=settings.clip_steps)
    rows = []
    for seed in args.seeds:
        for block in args.blocks:
            start = time.perf_counter()
            run = MiniRun(f"PAT {block}", "pat_tiny", VARIANTS[block])
            with tempfile.TemporaryDirectory() as tmp:
                model, metrics = run_one(run, seed, world, settings, clip, Path(tmp))
            rec = reconstruction_quality(model, world, settings.image_size, settings.val_scenes)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            row = {"block": block, "seed": seed, "trainable": trainable, "minutes": (time.perf_counter() - start) / 60}
            row |= {k: metrics[k] for k in ("seen", "unseen", "all", "hIoU")} | rec
            rows.append(row)
            print(json.dumps(row), flush=True)
    lines = [
        "| block | seed | trainable | PSNR (dB) | L1 | mIoU seen | mIoU unseen | minutes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['block']} | {r['seed']} | {r['trainable']:,} | {r['psnr']:.2f} | {r['l1']:.4f} | "
            f"{r['seen']:.1f} | {r['unseen']:.1f} | {r['minutes']:.1f} |"
        )
    header = f"pat_tiny on OVSS-mini, {settings.iters} iterations, {settings.image_size}px, {args.threads} threads\n\n"
    atomic_write_text(RESULTS / "spade-block.md", header + "\n".join(lines) + "\n")
    atomic_write_text(RESULTS / "spade-block.json", json.dumps({"settings": vars(args), "rows": rows}, indent=1))
    assert all(math.isfinite(r["psnr"]) for r in rows)


if __name__ == "__main__":
    main()
