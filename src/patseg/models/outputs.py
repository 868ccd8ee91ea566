"""Named records that models hand to the losses, the engine and the predictor."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Union

from torch import Tensor

Visual = Union[Tensor, Callable[[], Tensor]]  # a tensor, or a thunk evaluated only when a panel is written


@dataclass
class StepOutput:
    """What a model's ``training_losses`` returns for one batch.

    losses: weighted loss terms (scalars); the trainer minimises their sum.
    stats: scalars worth logging that are not optimised (codebook perplexity, dead codes, ...).
    visuals: image-like tensors for TensorBoard panels, ``(B, 3, H, W)`` in [0, 1] or ``(B, H, W)`` labels; a value
        may be a zero-argument callable, so that costly panels (predictions) are computed only when logged.
    """

    losses: dict[str, Tensor]
    stats: dict[str, float] = field(default_factory=dict)
    visuals: dict[str, Visual] = field(default_factory=dict)

    @property
    def total(self) -> Tensor:
        return sum(self.losses.values())  # type: ignore[return-value]
