"""PAT's pixel branch: the pixel stem, the three pyramid stages' tokenizers and the latent quantizer.

This is the part of PAT that depends only on the image and CLIP (plus the side ViT for the latent), so together
with the decoder it forms the detachable multi-scale tokenizer (``patseg.PyramidTokenizer``).
"""

from __future__ import annotations

from typing import Optional, Sequence, cast

import torch.nn.functional as F
from torch import Tensor, nn

from patseg.models.layers.common import Conv1x1
from patseg.models.layers.resample import PixelStem
from patseg.models.pat.geometry import STAGES, PyramidGrids
from patseg.models.pat.pyramid_stage import PixelStageOutput, PyramidStage
from patseg.models.pat.vmf_quantizer import QuantizerOutput, VMFQuantizer


class PixelBranch(nn.Module):
    """Stem + per-stage pixel tokenizers + latent quantizer.

    Arguments:
        stem: image -> early-stage pixel residual; None for Table II's "no pixel residual", whose stages use no
            residual (a stem whose output nothing reads would hold parameters without gradients).
        stages: the three PyramidStage modules (early, mid, late); their semantic halves are driven by the PAT
            model from inside the side ViT.
        tap_indices: CLIP tap depth feeding each stage (SAN's fusion taps 3/6/9 for ViT-B).
        side_width, code_dim, latent_codes: latent quantizer sizes (PreQuant 240 -> 32, K = 256); the latent's
            PostQuant belongs to each decoder, so that separate decoders share nothing but the codes.
        vmf: the Table II vMF switch, shared with the stage quantizers.
        commitment: β of the latent quantizer's commitment term (the stages take the same value).
    """

    def __init__(
        self,
        *,
        stem: Optional[PixelStem],
        stages: Sequence[PyramidStage],
        tap_indices: Sequence[int],
        side_width: int,
        code_dim: int,
        latent_codes: int,
        vmf: bool,
        commitment: float,
    ) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.tap_indices = tuple(tap_indices)
        self.latent_pre_quant = Conv1x1(side_width, code_dim)
        self.latent_quantizer = VMFQuantizer(num_codes=latent_codes, code_dim=code_dim, vmf=vmf, commitment=commitment)

    @property
    def pyramid_stages(self) -> tuple[PyramidStage, ...]:
        """The stages (early, mid, late) with their type (iterating the ``nn.ModuleList`` yields plain modules)."""
        return tuple(cast(PyramidStage, stage) for stage in self.stages)

    def encode_stages(self, x: Tensor, taps: dict[int, Tensor], grids: PyramidGrids) -> dict[str, PixelStageOutput]:
        """Tokenize the pyramid.

        Arguments:
            x: (B, 3, H, W) normalised image; taps: CLIP depth -> (B, C_clip, h_c, w_c); grids: this input's grids.
        Returns:
            stage name -> PixelStageOutput with z_q (B, D, h_s, w_s) and indices (B, h_s, w_s).
        """
        residual = self.stem(x) if self.stem is not None else None
        out = {}
        for name, stage, depth in zip(STAGES, self.pyramid_stages, self.tap_indices):
            tap = taps[depth]
            if tuple(tap.shape[-2:]) != tuple(grids.tap):
                # ViT-L/14-336: the 32x32 CLIP grid is brought to the side grid first, as SAN's fusion does.
                tap = F.interpolate(
                    tap, size=grids.tap, mode="bilinear", align_corners=False, antialias=tap.shape[-1] > grids.tap[-1]
                )
            out[name] = stage.pixel(tap, residual, grids.stages[name])
            residual = out[name].residual
        return out

    def quantize_latent(self, side_patches: Tensor) -> QuantizerOutput:
        """(B, C_side, h, w) final side patch map -> latent codes at the side grid."""
        return self.latent_quantizer(self.latent_pre_quant(side_patches))
