"""``patseg convert-san``: a released SAN checkpoint as a patseg weights file.

The renaming itself lives in :mod:`patseg.weights.san_release`; this module adds what needs a built model: the
preset's expected keys and shapes, and the architecture record written beside the tensors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from patseg.build import build_model
from patseg.errors import CheckpointError, PatsegError
from patseg.weights.files import save_weights
from patseg.weights.san_release import (
    DROPPED,
    SanLayout,
    check_release_state,
    detect_preset,
    read_san_release,
    rename_release,
)

logger = logging.getLogger(__name__)


def _read_release(checkpoint: Union[str, Path]) -> dict:
    """``read_san_release``, with any failure of torch's weights-only unpickler on a file that is not a checkpoint
    (it raises KeyError, IndexError, ValueError ... on arbitrary bytes) reported as CheckpointError."""
    try:
        return read_san_release(checkpoint)
    except PatsegError:
        raise
    except Exception as err:  # only torch.load runs here: any other failure means the bytes are not a checkpoint
        raise CheckpointError(
            f"{checkpoint}: not a torch checkpoint ({type(err).__name__}: {str(err)[:200]}); expected a SAN release "
            f"such as san_vit_b_16.pth"
        ) from None


@dataclass(frozen=True)
class ConversionReport:
    """preset: the preset recorded in ``out``; tensors: how many were written; dropped: release keys left out."""

    preset: str
    out: Path
    tensors: int
    dropped: tuple[str, ...]


def convert_san_checkpoint(
    checkpoint: Union[str, Path], out: Union[str, Path], *, preset: Optional[str] = None
) -> ConversionReport:
    """Convert a SAN release into a patseg weights file that ``build_model(weights=out)`` loads strictly.

    The file carries every tensor, CLIP's included, and records its preset (detected when None). Nothing is
    written unless every release key is known, every preset tensor is present and every shape matches.
    """
    release = _read_release(checkpoint)
    preset = preset or detect_preset(release, checkpoint)
    # Random init is fine: every tensor is overwritten, CLIP's included.
    model = build_model(preset)
    if model.config.is_pat:
        raise CheckpointError(
            f"preset '{preset}' is a PAT preset: convert into a SAN preset and start PAT with "
            f"build_model(..., init_from=FILE)"
        )
    if not any(k.startswith("clip.visual.transformer.resblocks.") for k in model.state_dict()):
        raise CheckpointError(
            f"preset '{preset}' has no OpenAI-style CLIP ViT; SAN releases use open_clip's "
            f"OpenAI ViT-B/16 or ViT-L/14-336"
        )
    layout = SanLayout.of(model)
    dropped = tuple(k for k in release if k in DROPPED)
    state = rename_release(release, layout, checkpoint)
    del release
    check_release_state(state, model.state_dict(), layout, checkpoint)
    model.load_state_dict(state, strict=True)
    count = len(state)
    del state
    path = save_weights(model, out)
    logger.info(
        "converted %d tensors of %s into %s (preset %s); dropped %s",
        count,
        checkpoint,
        path,
        preset,
        ", ".join(dropped) or "nothing",
    )
    return ConversionReport(preset=preset, out=path, tensors=count, dropped=dropped)
