"""OVSS-mini's figure: example evaluation scenes with the ground truth, each model's prediction, PAT's early tokens
and its reconstruction, and a legend that names each colour's concept and marks the unseen ones."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from patseg.images import legend_font, palette
from patseg.mini.evaluate import VAL_SEED
from patseg.mini.scenes import SyntheticSegmentation
from patseg.mini.world import WorldConfig
from patseg.models.pat.model import PAT, PatOutput
from patseg.models.san.model import SAN
from patseg.predictor import Segmenter

IGNORE_GREY = (128, 128, 128)


def _legend(world: WorldConfig, shown: list[int], colours: np.ndarray, width: int) -> Image.Image:
    """Swatch + name for each concept in ``shown``, flowing in rows across ``width`` pixels; unseen: "(unseen)"."""
    names = [world.concept_names[c] + (" (unseen)" if world.concept_names[c] in world.unseen else "") for c in shown]
    font = legend_font("".join(names))
    column = max((int(font.getlength(n)) for n in names), default=0) + 30
    per_row = max(1, width // column)
    rows = (len(names) + per_row - 1) // per_row
    canvas = Image.new("RGB", (width, rows * 20 + 8), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (c, name) in enumerate(zip(shown, names)):
        x, y = 4 + (i % per_row) * column, 4 + (i // per_row) * 20
        draw.rectangle([x, y, x + 14, y + 14], fill=tuple(int(v) for v in colours[c]), outline=(0, 0, 0))
        draw.text((x + 20, y + 1), name, fill=(160, 30, 30) if "(unseen)" in name else (0, 0, 0), font=font)
    return canvas


@torch.inference_mode()
def make_figure(
    world: WorldConfig, image_size: int, models: dict[str, SAN], num_scenes: int = 4, cell: int = 128
) -> Image.Image:
    """Rows of evaluation scenes: image, ground truth, each model's labels, PAT's early tokens and reconstruction."""
    names = list(world.concept_names)
    colours = palette(len(names))
    val = SyntheticSegmentation(world, "val", num_scenes, image_size, VAL_SEED)
    segmenters = {k: Segmenter(m, names, short_side=image_size) for k, m in models.items()}
    pat_name = next((k for k, m in models.items() if isinstance(m, PAT)), None)
    columns = ["image", "ground truth", *models]
    if pat_name is not None:
        columns += [f"{pat_name} tokens (early)", f"{pat_name} reconstruction"]
    grid = Image.new("RGB", (len(columns) * (cell + 4), num_scenes * (cell + 4) + 18), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for c, title in enumerate(columns):
        draw.text((c * (cell + 4) + 2, 2), title[:24], fill=(0, 0, 0))
    shown: set[int] = set()
    for r in range(num_scenes):
        item = val[r]
        image, label = item["image"].permute(1, 2, 0).numpy(), item["label"].numpy()
        shown.update(int(v) for v in np.unique(label) if v < len(names))
        truth = np.where((label < len(names))[..., None], colours[np.minimum(label, len(names) - 1)], IGNORE_GREY)
        panels = [image, truth]
        for name, segmenter in segmenters.items():
            inference = segmenter.infer(image, reconstruct=name == pat_name)
            pred = segmenter.labels(inference)
            shown.update(int(v) for v in np.unique(pred))
            panels.append(colours[pred])
            if name == pat_name:
                out = inference.output
                assert isinstance(out, PatOutput) and out.reconstruction is not None
                codes = out.quant["early"].indices[0].cpu().numpy()
                recon = out.reconstruction[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
                extra = [palette(int(codes.max()) + 1)[codes], (recon * 255 + 0.5).astype(np.uint8)]
        if pat_name is not None:
            panels += extra
        for c, panel in enumerate(panels):
            tile = Image.fromarray(panel.astype(np.uint8)).resize((cell, cell), Image.Resampling.NEAREST)
            grid.paste(tile, (c * (cell + 4), 18 + r * (cell + 4)))
    legend = _legend(world, sorted(shown), colours, grid.width)
    canvas = Image.new("RGB", (grid.width, grid.height + legend.height), (255, 255, 255))
    canvas.paste(grid, (0, 0))
    canvas.paste(legend, (0, grid.height))
    return canvas
