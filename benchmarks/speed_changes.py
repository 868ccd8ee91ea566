"""What each inference speed change bought: the former and the current implementation of a part, side by side.

    python benchmarks/speed_changes.py --threads 2                      # ViT-B/16 shapes at 640x640
    python benchmarks/speed_changes.py --threads 1 --out /tmp/changes   # elsewhere

Every part is measured on the inputs the full-size presets give it at 640x640 (random weights), the two
implementations and the matrix-product probe timed in the same rounds (``patseg.bench.measure_with_probe``), so
the ratio of their medians is one run's and load that comes and goes hits all of them alike. The outputs of the
two are compared: the largest absolute difference, and for label maps the share of pixels whose label differs.

- ``mask decoder (SAN, 40x40)`` and ``decoded mask head (PAT, 160x160)``: SAN's MLP mask decoder computing the
  pixel and attention embeddings and then their products with the queries (former), against the MLPs' last layer
  folded into the queries (``patseg.models.san.mask_decoder.query_map_product``).
- ``Segmenter.scores (150 classes)``: every class chunk copied into a list, concatenated, then copied by numpy
  (former), against the chunks written into one array in place and handed to numpy without a copy.
- ``attention-bias pooling``: the CLIP attention bias max-pooled from the decoder's grid to the CLIP grid with
  ``adaptive_max_pool2d`` (former) against rows then columns (``patseg.models.san.model.max_pool_to``).
- ``forward, 1x1 convolutions``: the whole model forward with ``Conv1x1`` running every 1x1 convolution as
  ``nn.Conv2d`` does (former), against its matrix products on channels-last and contiguous maps
  (``patseg.models.layers.common``).
- ``post-processing``: ``Segmenter.postprocess`` on a region-like prediction (``patseg.bench.postprocess``) with the
  mask logits upsampled whole before the bounded argmax (former), against the lazy masks that read the block
  bounds at the critical rows and columns only (``patseg.models.san.semantic_argmax.output_masks``), and the
  ambiguous blocks' argmax taken along the last axis instead of a middle one; on region-like masks and on the
  random-weight model's own (nearly flat, so many blocks stay ambiguous); for PAT's H/4 masks, which are upsampled
  whole, now in channels-last memory order. For these label maps the difference
  column is the share of pixels whose label differs.

Every row runs with large blocks kept (``patseg.allocator.keep_large_blocks``), as the ``patseg`` command does;
``benchmarks/allocator.py`` measures that policy itself, in fresh processes.

Results go to ``OUT.json`` and ``OUT.md`` (default ``benchmarks/results/speed-changes``), written atomically; an
existing result is not replaced without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from provenance import refuses_to_replace, write_results

from patseg.allocator import keep_large_blocks
from patseg.bench import as_dict, environment, make_segmenter, matmul_probe, measure_with_probe, random_image
from patseg.bench.postprocess import region_prediction
from patseg.build import build_model
from patseg.models.layers.common import Conv1x1
from patseg.models.san import semantic_argmax as semantic_argmax_module
from patseg.models.san.mask_decoder import MaskDecoder, MaskDecoderOutput
from patseg.models.san.model import SegPrediction, max_pool_to
from patseg.models.san.semantic_argmax import semantic_argmax, upsample_masks
from patseg.predictor import Segmenter
from patseg.resize import shortest_edge_size

RESULTS = Path(__file__).resolve().parent / "results"
CPU = torch.device("cpu")


# ---------------------------------------------------------------------------------------------------- former code
def former_mask_decoder(dec: MaskDecoder, queries: torch.Tensor, pixels: torch.Tensor) -> MaskDecoderOutput:
    """The mask decoder as it was: full MLP embeddings, then einsums with the queries, then the bias's affine map."""
    q = dec.query_mlp(queries)
    p = dec.pix_mlp(pixels)
    b, c, h, w = p.shape
    masks = torch.einsum("bqc,bchw->bqhw", q, p)
    keys = dec.attn_mlp(pixels).reshape(b, dec.clip_heads, c, h, w)
    bias = torch.einsum("bqc,bnchw->bnqhw", q, keys)
    bias = dec.bias_scaling(bias.unsqueeze(-1)).squeeze(-1)
    return MaskDecoderOutput(masks=masks, attn_bias=bias)


def former_scores(seg: Segmenter, image: np.ndarray) -> np.ndarray:
    """Segmenter.scores as it was: chunks gathered in a list, concatenated, converted with a copy."""
    pred, padded, valid = seg._forward(image)
    chunks = [part for _, part in seg._class_scores(pred, padded, valid, image.shape[:2])]
    return torch.cat(chunks).cpu().numpy().astype(np.float32)


def former_score_blocks(probs: torch.Tensor, logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The exact scoring of ambiguous blocks as it was: scores (n, K, b * b), argmax along the middle axis."""
    best = torch.bmm(probs.t()[classes], logits.sigmoid()).argmax(1)
    return classes.gather(1, best)


def former_postprocess(
    pred: SegPrediction, padded: tuple[int, int], valid: tuple[int, int], out: tuple[int, int]
) -> torch.Tensor:
    """Segmenter.postprocess as it was: the mask logits upsampled whole, then the bounded argmax with the former
    block scoring."""
    probs = pred.logits[0].float().softmax(-1)[:, :-1]
    current = semantic_argmax_module._score_blocks
    semantic_argmax_module._score_blocks = former_score_blocks
    try:
        return semantic_argmax(probs, upsample_masks(pred.masks[0].float(), padded, valid, out))
    finally:
        semantic_argmax_module._score_blocks = current


def postprocess_case(
    seg: Segmenter,
    image_hw: tuple[int, int],
    pred: SegPrediction | None = None,
    classes: int = 150,
    *,
    name: str = "SAN",
    stride: int = 16,
) -> dict[str, Any]:
    """The post-processing of ``pred`` (default: a region-like prediction on a mask grid of the padded input over
    ``stride``: 16 for SAN, 4 for PAT's decoded head) for an image of ``image_hw``."""
    padded = seg.input_size(*image_hw)
    valid = shortest_edge_size(*image_hw, seg.short_side, seg.max_long_side)
    what = "random-weight model's masks"
    if pred is None:
        grid = (padded[0] // stride, padded[1] // stride)
        pred = region_prediction(seg.model.side.num_queries, classes, grid)
        what = "region-like masks"
    one: SegPrediction = pred

    def former() -> torch.Tensor:
        with torch.inference_mode():
            return former_postprocess(one, padded, valid, image_hw)

    def current() -> torch.Tensor:
        return seg.postprocess(one, padded, valid, image_hw)

    return {
        "name": f"post-processing ({name}, {image_hw[0]}x{image_hw[1]} image, {classes} classes, {what})",
        "former": former,
        "current": current,
        "difference": lambda: float((former() != current()).float().mean()),
    }


@contextlib.contextmanager
def plain_convolutions() -> Iterator[None]:
    """Conv1x1 as it was: nn.Conv2d's forward whatever the input's layout."""
    fast = Conv1x1.forward
    Conv1x1.forward = torch.nn.Conv2d.forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        Conv1x1.forward = fast  # type: ignore[method-assign]


def forward_case(name: str, seg: Segmenter, image: np.ndarray) -> dict[str, Any]:
    x, _ = seg._prepare(image)

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return seg.model(x, seg.class_embeddings).main.masks

    def former() -> torch.Tensor:
        with plain_convolutions():
            return run()

    return {
        "name": name,
        "former": former,
        "current": run,
        "difference": lambda: (former() - run()).abs().max().item(),
    }


# ---------------------------------------------------------------------------------------------------- cases
def decoder_inputs(model: Any, decoder: MaskDecoder, grid: int, pixel_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    queries = torch.randn(1, model.side.num_queries, model.side.width, generator=gen)
    return queries, torch.randn(1, pixel_dim, grid, grid, generator=gen)


def compare_decoder(decoder: MaskDecoder, queries: torch.Tensor, pixels: torch.Tensor) -> Callable[[], float]:
    def difference() -> float:
        with torch.inference_mode():
            old, new = former_mask_decoder(decoder, queries, pixels), decoder(queries, pixels)
        assert new.attn_bias is not None and old.attn_bias is not None
        return max((old.masks - new.masks).abs().max().item(), (old.attn_bias - new.attn_bias).abs().max().item())

    return difference


def cases(size: int, classes: int) -> list[dict[str, Any]]:
    """(name, former, current, difference) of every changed part at the full-size presets' shapes."""
    torch.manual_seed(0)
    san, pat = build_model("san_vitb16").eval(), build_model("pat_vitb16_clip").eval()
    out = []
    for name, model, decoder, grid, dim in (
        ("mask decoder (SAN, side grid)", san, san.mask_decoder, size // 16, san.side.width),
        ("decoded mask head (PAT, H/4)", pat, pat.mask_head, size // 4, pat.config.pat.pixel_dim),
    ):
        queries, pixels = decoder_inputs(model, decoder, grid, dim)

        def former(d: MaskDecoder = decoder, q: torch.Tensor = queries, p: torch.Tensor = pixels) -> None:
            with torch.inference_mode():
                former_mask_decoder(d, q, p)

        def current(d: MaskDecoder = decoder, q: torch.Tensor = queries, p: torch.Tensor = pixels) -> None:
            with torch.inference_mode():
                d(q, p)

        out.append({"name": f"{name}, {grid}x{grid}", "former": former, "current": current})
        out[-1]["difference"] = compare_decoder(decoder, queries, pixels)
        bias = torch.randn(model.clip.num_heads * model.side.num_queries, grid, grid)
        clip_grid = (size // 32, size // 32)  # SAN's CLIP input is the image at half size, 16-pixel patches
        out.append(
            {
                "name": f"attention-bias pooling ({name.split(' (')[1][:3]}, {grid}x{grid} to {clip_grid[0]})",
                "former": lambda b=bias, g=clip_grid: torch.nn.functional.adaptive_max_pool2d(b, g),
                "current": lambda b=bias, g=clip_grid: max_pool_to(b, g),
                "difference": lambda b=bias, g=clip_grid: (
                    (torch.nn.functional.adaptive_max_pool2d(b, g) - max_pool_to(b, g)).abs().max().item()
                ),
            }
        )
    san_seg = make_segmenter(san, classes, (size, size))
    image = random_image(size, size)
    out.append(
        {
            "name": f"Segmenter.scores (SAN, {size}x{size}, {classes} classes)",
            "former": lambda: former_scores(san_seg, image),
            "current": lambda: san_seg.scores(image),
            "difference": lambda: float(np.abs(former_scores(san_seg, image) - san_seg.scores(image)).max()),
        }
    )
    for image_hw in ((size, size), (size * 3 // 4, size)):
        out.append(postprocess_case(san_seg, image_hw, classes=classes))
    out.append(postprocess_case(san_seg, (size, size), san_seg.infer(image).output.main, classes))
    out.append(postprocess_case(san_seg, (size, size), classes=classes, name="PAT", stride=4))
    for name, model in (("SAN", san), ("PAT", pat)):
        seg = make_segmenter(model, classes, (size, size))
        out.append(forward_case(f"{name} forward, 1x1 convolutions ({size}x{size})", seg, image))
    return out


def measure_cases(args: argparse.Namespace) -> list[dict[str, Any]]:
    keep_large_blocks()
    probe = matmul_probe(CPU)
    rows = []
    for case in cases(args.size, args.classes):
        print(f"{case['name']} ...", flush=True)
        timed, probe_m = measure_with_probe(
            {"former": case["former"], "current": case["current"]}, CPU, probe, warmup=1, repeats=args.repeats
        )
        former, current = timed["former"], timed["current"]
        rows.append(
            {
                "part": case["name"],
                "former": as_dict(former),
                "current": as_dict(current),
                "speedup": former.median_ms / current.median_ms,
                "gflops_saved": (former.gflops or 0.0) - (current.gflops or 0.0),
                "max_abs_difference": case["difference"](),
                "probe_gflops_per_s": probe_m.gflops_per_s,
            }
        )
    return rows


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        f"Measured on {env['device_name']} ({env['threads']} threads, fp32), torch {env['torch']}, random weights.",
        "",
        f"Command: `{report['command']}`",
        "",
        "| part | former ms | current ms | speed-up | former GFLOPs | current GFLOPs | current GFLOP/s (% probe) "
        "| max abs difference |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["parts"]:
        f, c = r["former"], r["current"]
        lines.append(
            f"| {r['part']} | {f['median_ms']:.1f} | {c['median_ms']:.1f} | {r['speedup']:.2f}x | {f['gflops']:.3g} "
            f"| {c['gflops']:.3g} | {c['gflops_per_s']:.0f} ({100 * c['of_probe']:.0f}%) "
            f"| {r['max_abs_difference']:.2g} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--size", type=int, default=640, help="image side (default 640)")
    parser.add_argument("--classes", type=int, default=150, help="vocabulary size for scores (default 150)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; medians are reported (default 5)")
    parser.add_argument("--out", type=Path, default=RESULTS / "speed-changes", help="output path without suffix")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing result")
    args = parser.parse_args(argv)
    out_json, out_md = args.out.with_suffix(".json"), args.out.with_suffix(".md")
    if refuses_to_replace((out_json, out_md), args.overwrite):
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    given = sys.argv[1:] if argv is None else argv
    report = {
        "command": ("python benchmarks/speed_changes.py " + " ".join(shlex.quote(a) for a in given)).strip(),
        "environment": environment(CPU),
        "parts": measure_cases(args),
    }
    text = markdown(report)
    print(text)
    write_results(out_json, out_md, report, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
