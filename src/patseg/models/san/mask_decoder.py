"""SAN's MLP mask decoder: mask logits and per-CLIP-head attention biases from query tokens and a pixel map.

Port of ``MLPMaskDecoder`` in MendelXu/SAN ``san/model/side_adapter/side_adapter.py``.
Three MLPs embed the queries (``query_mlp``), the pixels (``pix_mlp``) and per-head attention keys (``attn_mlp``):

    masks[b, q, y, x]   = sum_c Q[b, q, c] P[b, c, y, x]
    bias[b, n, q, y, x] = w * (sum_c Q[b, q, c] A[b, n, c, y, x]) + b0       (w, b0: ``bias_scaling``)

SAN's ``ATTN_BIAS.NUM_LAYERS`` is 1 (one bias shared by all recognition blocks), so there is no layer axis.
``attn_mlp``'s output channels are ordered (head, c) with c fastest, SAN's layout, so its weights load as they are.
PAT reuses the decoder on the 256-d decoded pixel features: ``pixel_dim`` need not equal ``query_dim``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from patseg.models.layers.common import MLP


class MaskDecoderOutput(NamedTuple):
    """masks: (B, Q, h, w) mask logits; attn_bias: (B, clip_heads, Q, h, w) attention bias for CLIP's heads."""

    masks: Tensor
    attn_bias: Tensor


class MaskDecoder(nn.Module):
    """Mask logits and CLIP attention biases as dot products of query and pixel embeddings.

    Args:
        query_dim: channel width of the query tokens (side ViT width, 240).
        pixel_dim: channel width of the pixel map (240 for the side ViT, 256 for PAT's decoded features).
        dim: embedding width of the three MLPs (SAN: 256).
        num_layers: layers per MLP (SAN: 3).
        clip_heads: attention heads of the CLIP recognition blocks (12 for ViT-B, 16 for ViT-L).
        rescale_attn_bias: learn a scalar affine map of the bias (SAN ``RESCALE_ATTN_BIAS``), else identity.
    """

    def __init__(
        self,
        *,
        query_dim: int,
        pixel_dim: int,
        dim: int = 256,
        num_layers: int = 3,
        clip_heads: int,
        rescale_attn_bias: bool = True,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.clip_heads = clip_heads
        self.query_mlp = MLP(query_dim, dim, dim, num_layers)
        self.pix_mlp = MLP(pixel_dim, dim, dim, num_layers, on_maps=True)
        self.attn_mlp = MLP(pixel_dim, dim, dim * clip_heads, num_layers, on_maps=True)
        # Linear(1, 1) applied elementwise: one learnable scale and offset (SAN keeps PyTorch's default init)
        self.bias_scaling = nn.Linear(1, 1) if rescale_attn_bias else nn.Identity()

    def forward(self, queries: Tensor, pixels: Tensor) -> MaskDecoderOutput:
        """queries (B, Q, C_q), pixels (B, C_p, h, w) -> masks (B, Q, h, w), attn_bias (B, clip_heads, Q, h, w)."""
        q = self.query_mlp(queries)
        p = self.pix_mlp(pixels)
        b, c, h, w = p.shape
        masks = torch.einsum("bqc,bchw->bqhw", q, p)
        keys = self.attn_mlp(pixels).reshape(b, self.clip_heads, c, h, w)
        bias = torch.einsum("bqc,bnchw->bnqhw", q, keys)
        bias = self.bias_scaling(bias.unsqueeze(-1)).squeeze(-1)
        return MaskDecoderOutput(masks=masks, attn_bias=bias)
