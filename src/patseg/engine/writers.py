"""What rank 0 writes while training: TensorBoard scalars and image panels, ``metrics.jsonl``, a progress bar.

``metrics.jsonl`` holds one JSON object per logged step (as detectron2's JSONWriter does), so runs can be plotted
or compared without TensorBoard. TensorBoard is imported only when a writer is created.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from patseg.atomic import atomic_write_text
from patseg.models.outputs import Visual

PANEL_IMAGES = 4  # batch items shown side by side in one image panel
METRICS_FILE = "metrics.jsonl"


def label_palette(num_colors: int = 256, seed: int = 0) -> Tensor:
    """A fixed random palette ``(num_colors, 3)`` in [0, 1]; the last entry (255, the ignore label) is black."""
    generator = torch.Generator().manual_seed(seed)
    palette = torch.rand(num_colors, 3, generator=generator) * 0.8 + 0.2
    palette[-1] = 0.0
    return palette


def image_panel(tensor: Tensor, max_items: int = PANEL_IMAGES) -> Tensor:
    """Lay out the first ``max_items`` of a batch side by side as one ``(3, H, W * n)`` image in [0, 1].

    Arguments:
        tensor: images ``(B, 3, H, W)`` in [0, 1], or label maps ``(B, H, W)`` of integer class indices
            (shown with :func:`label_palette`; values outside the palette wrap modulo its size).
    """
    tensor = tensor.detach()[:max_items].cpu()
    if tensor.dim() == 3:
        palette = label_palette()
        tensor = palette[tensor.long() % palette.shape[0]].permute(0, 3, 1, 2)
    elif tensor.dim() != 4 or tensor.shape[1] != 3:
        raise ValueError(f"an image panel needs (B, 3, H, W) images or (B, H, W) labels, got {tuple(tensor.shape)}")
    tensor = tensor.float().clamp(0.0, 1.0)
    return torch.cat(list(tensor), dim=2)


class TrainingWriter:
    """Rank-0 sink for scalars and images: TensorBoard event files plus ``metrics.jsonl`` in ``log_dir``.

    ``resume_at``: the iteration a resumed run starts from; records of later iterations (written by the run that
    stopped after its last checkpoint) are dropped from ``metrics.jsonl`` and hidden in TensorBoard (``purge_step``).
    """

    def __init__(self, log_dir: str | Path, resume_at: Optional[int] = None) -> None:
        from torch.utils.tensorboard import SummaryWriter  # heavy import, only on rank 0

        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if resume_at is not None:
            _drop_records_after(self.log_dir / METRICS_FILE, resume_at)
        purge = None if resume_at is None else resume_at + 1
        self._tb = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge)
        self._jsonl = open(self.log_dir / METRICS_FILE, "a")

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Log scalars (``step`` = iterations completed); non-finite values are written as null in JSON."""
        for name, value in values.items():
            self._tb.add_scalar(name, value, step)
        record = {"iteration": step, **{k: (v if math.isfinite(v) else None) for k, v in values.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()

    def images(self, panels: dict[str, Visual], step: int) -> None:
        """Log image panels; each value (or the result of calling it) goes through :func:`image_panel`."""
        for name, tensor in panels.items():
            self._tb.add_image(name, image_panel(tensor() if callable(tensor) else tensor), step)

    def close(self) -> None:
        self._tb.close()
        self._jsonl.close()


def _drop_records_after(path: Path, iteration: int) -> None:
    """Keep the ``metrics.jsonl`` rows of iterations up to ``iteration`` (unreadable rows are dropped too)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            step = json.loads(line).get("iteration")
        except (json.JSONDecodeError, AttributeError):
            continue  # a row cut off by a kill
        if isinstance(step, int) and step <= iteration:
            kept.append(line + "\n")
    atomic_write_text(path, "".join(kept))


class ProgressBar:
    """A tqdm bar over iterations with ETA, shown on rank 0 only (``enabled=False`` elsewhere)."""

    def __init__(self, start: int, total: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=total, initial=start, disable=not enabled, desc="train", unit="it", dynamic_ncols=True, smoothing=0.05
        )

    def update(self, postfix: Optional[dict[str, float]] = None) -> None:
        if postfix:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()
