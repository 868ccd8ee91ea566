"""SAN's MLP mask decoder: mask logits and per-CLIP-head attention biases from query tokens and a pixel map.

Port of ``MLPMaskDecoder`` in MendelXu/SAN ``san/model/side_adapter/side_adapter.py``.
Three MLPs embed the queries (``query_mlp``), the pixels (``pix_mlp``) and per-head attention keys (``attn_mlp``):

    masks[b, q, y, x]   = sum_c Q[b, q, c] P[b, c, y, x]
    bias[b, n, q, y, x] = w * (sum_c Q[b, q, c] A[b, n, c, y, x]) + b0       (w, b0: ``bias_scaling``)

Both products are computed with the MLP's last (affine) layer folded into the queries: with P = W h + b, the mask
logit is (Q W) h + Q b, so each pixel costs Q x hidden multiply-adds instead of (heads x dim) x hidden for the
embedding and then Q x heads x dim for the product. The sums are the same; only their order changes (float rounding).
For PAT's head on the 160x160 decoded map this removes 40 of its 74 GFLOPs.

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
    """masks: (B, Q, h, w) mask logits; attn_bias: (B, clip_heads, Q, h, w) attention bias for CLIP's heads (None
    when it was not asked for)."""

    masks: Tensor
    attn_bias: Tensor | None


def query_map_product(
    queries: Tensor, mlp: MLP, pixels: Tensor, groups: int, affine: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """sum_c queries[b, q, c] * mlp(pixels)[b, g * D + c, y, x] for every group g, then ``scale * x + shift`` when
    ``affine`` = (scale, shift) (0-d tensors) is given.

    The MLP's last layer (weight (groups * D, Dh), bias (groups * D)) is folded into the queries, so the map is only
    run through the hidden layers. queries (B, Q, D), pixels (B, C, h, w) -> (B, groups, Q, h, w).
    """
    hidden = mlp.hidden(pixels)  # (B, Dh, h, w)
    b, dh, h, w = hidden.shape
    if h * w <= queries.shape[1]:  # folding costs Q x D x Dh per group: below Q pixels embedding them is cheaper
        keys = mlp.layers[-1](hidden).view(b, groups, -1, h, w)
        out = torch.einsum("bqc,bgchw->bgqhw", queries, keys)
        return out if affine is None else out * affine[0] + affine[1]
    weight, bias = mlp.last_affine()  # output channels are ordered (group, c), c fastest
    qw = torch.einsum("bqc,gcd->bgqd", queries, weight.view(groups, -1, dh))  # (B, g, Q, Dh)
    qb = torch.einsum("bqc,gc->bgq", queries, bias.view(groups, -1))  # (B, g, Q)
    if affine is not None:  # folded too: no pass over the (B, g, Q, h, w) result
        qw, qb = qw * affine[0], qb * affine[0] + affine[1]
    # One (g * Q, Dh) x (Dh, h * w) product per image; the bias enters as its own term.
    out = torch.baddbmm(qb.reshape(b, -1, 1), qw.reshape(b, -1, dh), hidden.flatten(2))
    return out.view(b, groups, -1, h, w)


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

    def forward(self, queries: Tensor, pixels: Tensor, *, with_bias: bool = True) -> MaskDecoderOutput:
        """queries (B, Q, C_q), pixels (B, C_p, h, w) -> masks (B, Q, h, w), attn_bias (B, clip_heads, Q, h, w).

        ``with_bias=False`` skips the attention-bias branch (its ``attn_bias`` is None)."""
        q = self.query_mlp(queries)
        masks = query_map_product(q, self.pix_mlp, pixels, 1)[:, 0]
        if not with_bias:
            return MaskDecoderOutput(masks=masks, attn_bias=None)
        # The bias's elementwise affine map w * x + b0 (or the identity), folded into the product: read off at
        # x = 0 and x = 1, so that any form of the module works (a dynamically quantized Linear has no weight tensor).
        ends = self.bias_scaling(q.new_tensor([[0.0], [1.0]]))[:, 0]
        affine = ends[1] - ends[0], ends[0]
        bias = query_map_product(q, self.attn_mlp, pixels, self.clip_heads, affine)
        return MaskDecoderOutput(masks=masks, attn_bias=bias)
