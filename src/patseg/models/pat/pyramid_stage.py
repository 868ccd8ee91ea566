"""One stage of PAT's feature pyramid: the pixel branch and the semantic branch of Eq. (2).

Pixel branch (top of Fig. 4): the CLIP tap, projected to the pixel width and joined by the pooled pixel residual,
is resampled to the stage grid, the residual is added again, and the result is tokenized by the stage's vMF
quantizer. Semantic branch (bottom): the stage codebook, conditioned on the previous stage's updated tokens
through the TokenMixer, runs one hyperspherical mean-shift step over the side ViT's patch tokens (HSAttn), and the
global tokens read the side features with the mixed codebook as their query position. Nothing flows from the
semantic branch into the pixel branch, which is why the pixel branch detaches as a tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from patseg.models.layers.common import Conv1x1, LayerNorm2d
from patseg.models.layers.resample import ConvDown, Resample
from patseg.models.layers.transformer import QueryCrossAttention
from patseg.models.pat.hsattn import hs_attention
from patseg.models.pat.token_mixer import TokenMixer
from patseg.models.pat.vmf_quantizer import QuantizerOutput, VMFQuantizer


@dataclass
class PixelStageOutput:
    """residual: (B, C_pix, h_s, w_s) pixel residual passed to the next stage (None without ``pixel_residual``);
    quant: the stage's VQ result."""

    residual: Optional[Tensor]
    quant: QuantizerOutput


class PyramidStage(nn.Module):
    """PAT VQ module for one stage (early, mid or late).

    Arguments:
        clip_width: channels of the CLIP tap feeding this stage.
        side_width: channels of the side ViT (240).
        pixel_dim: pixel-branch width C_pix (256).
        code_dim: codebook dimension (32).
        num_codes: codebook size K_s.
        prev_codes: K_{s-1} of the previous stage, or None for the first stage.
        num_queries: number of global tokens (100).
        tap_factor: resampling factor from the tap grid to the stage grid (4, 2, 1 or 0.5).
        down_factor: pixel-residual resampling from the previous stage grid (1/2, 1, ...); None for the first stage.
        kappa, vmf: HSAttn concentration and the vMF switch (Table II "vmf").
        commitment: β of the stage quantizer's commitment term.
        token_mixer, pixel_residual: Table II switches. Without ``pixel_residual`` there is no Down; without
            ``token_mixer`` there is no HSAttn (and no K/V projection): ê_s would have no consumer, as the paper
            says of this ablation ("the local tokens ... have no contribution to the segmentation"), and a
            parameter without a gradient breaks DistributedDataParallel.
        mixer_hidden, groups, heads: TokenMixer width, DySample groups, global cross-attention heads.
    """

    def __init__(
        self,
        *,
        clip_width: int,
        side_width: int,
        pixel_dim: int,
        code_dim: int,
        num_codes: int,
        prev_codes: Optional[int],
        num_queries: int,
        tap_factor: float,
        down_factor: Optional[float],
        kappa: float,
        vmf: bool,
        commitment: float,
        token_mixer: bool,
        pixel_residual: bool,
        mixer_hidden: int = 256,
        groups: int = 4,
        heads: int = 6,
    ) -> None:
        super().__init__()
        self.kappa, self.vmf, self.pixel_residual = kappa, vmf, pixel_residual
        # pixel branch
        self.down = (
            ConvDown(pixel_dim, factor=round(1 / down_factor)) if pixel_residual and down_factor is not None else None
        )
        self.proj = nn.Sequential(LayerNorm2d(clip_width), Conv1x1(clip_width, pixel_dim))
        self.resample = Resample(pixel_dim, factor=tap_factor, groups=groups)
        self.pre_quant = Conv1x1(pixel_dim, code_dim)
        self.quantizer = VMFQuantizer(num_codes=num_codes, code_dim=code_dim, vmf=vmf, commitment=commitment)
        # semantic branch; K = V: the side tokens in the 32-d codebook space
        self.kv = nn.Linear(side_width, code_dim) if token_mixer else None
        self.mixer = (
            TokenMixer(in_tokens=prev_codes, out_tokens=num_codes, hidden=mixer_hidden)
            if token_mixer and prev_codes is not None
            else None
        )
        self.mixer_g = (
            TokenMixer(
                in_tokens=num_codes, out_tokens=num_queries, hidden=mixer_hidden, in_dim=code_dim, out_dim=side_width
            )
            if token_mixer
            else None
        )
        self.global_attn = QueryCrossAttention(side_width, kv_dim=side_width, heads=heads)

    def pixel(self, tap: Tensor, residual: Optional[Tensor], grid: tuple[int, int]) -> PixelStageOutput:
        """Pixel branch of Eq. (2).

        Arguments:
            tap: (B, C_clip, t_h, t_w) CLIP feature at the tap grid.
            residual: (B, C_pix, *) the previous stage's residual (or the stem output for the first stage);
                None exactly when the stage was built without ``pixel_residual``.
            grid: (h_s, w_s) this stage's grid.
        """
        if (residual is not None) != self.pixel_residual:
            raise ValueError(
                f"pixel_residual={self.pixel_residual} but residual is {'given' if residual is not None else 'None'}"
            )
        f = self.proj(tap)
        if residual is None:  # Table II "no pixel residual": u_s = Up(Proj(f_s))
            return PixelStageOutput(residual=None, quant=self.quantizer(self.pre_quant(self.resample(f, size=grid))))
        x = _fit(self.down(residual) if self.down is not None else residual, grid)
        u = self.resample(f + F.adaptive_avg_pool2d(x, f.shape[-2:]), size=grid) + x
        return PixelStageOutput(residual=x, quant=self.quantizer(self.pre_quant(u)))

    def semantic(
        self, queries: Tensor, patches: Tensor, prev_tokens: Optional[Tensor]
    ) -> tuple[Tensor, Optional[Tensor]]:
        """Semantic branch of Eq. (2).

        Arguments:
            queries: (B, Q, C_side) global tokens; patches: (B, L, C_side) side patch tokens z_s;
            prev_tokens: (B, K_{s-1}, D) updated tokens of the previous stage, or None.
        Returns:
            (updated queries (B, Q, C_side), updated local tokens ê_s (B, K_s, D), or None without
            ``token_mixer``, where q = q + CrossAttn(q, z_s, z_s) alone).
        """
        if self.kv is None:
            return self.global_attn(queries, patches), None
        e = self.quantizer.codes().unsqueeze(0).expand(queries.shape[0], -1, -1)  # (B, K, D)
        if self.mixer is not None and prev_tokens is not None:
            e = e + self.mixer(prev_tokens)
        kv = self.kv(patches)  # (B, L, D)
        tokens = hs_attention(e, kv, kv, kappa=self.kappa, vmf=self.vmf)
        assert self.mixer_g is not None  # built with kv (token_mixer)
        return self.global_attn(queries, patches, query_pos=self.mixer_g(tokens)), tokens


def _fit(x: Tensor, grid: tuple[int, int]) -> Tensor:
    """Make a strided-conv output match the stage grid exactly (odd grids lose or gain one row/column)."""
    if tuple(x.shape[-2:]) == tuple(grid):
        return x
    return F.interpolate(x, size=grid, mode="bilinear", align_corners=False)
