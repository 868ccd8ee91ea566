"""Attention blocks of PAT's shared decoder (Eq. 3): the Transformer layer on a feature map, the 2-D sine position
encoding it uses, and the residual cross-attention through which the global tokens read a feature map.

PAT's decoder layer: 256-d, 8 heads, FFN 1024, pre-norm, 2-D sine position, ``scaled_dot_product_attention``; at
evaluation a 640x2560 image puts 25,600 tokens in the early grid, so self-attention can be split along the query
axis (``chunk_tokens``) without changing the result.

Reading of "2-D sine position added before each layer": as in DETR / Mask2Former, the encoding is added to the
attention's queries and keys at every layer (not to the values), so it steers where tokens look without being
written into the features that SPADE and the heads consume.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sine_position_encoding(
    h: int, w: int, dim: int, *, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """DETR's normalised 2-D sine position encoding (facebookresearch/detr ``models/position_encoding.py``).

    Row and column indices y = 1..h, x = 1..w are normalised to (0, 2π] (divided by the last index + 1e-6, times 2π).
    With F = dim / 2 features per axis and T = 10000, channel 2k of an axis is ``sin(p / T^(2k/F))`` and channel
    2k + 1 is ``cos(p / T^(2k/F))``; the y features come first, then the x features.

    Returns:
        (h * w, dim), tokens in row-major order (token index = y * w + x).
    """
    if dim % 4:
        raise ValueError(f"sine position encoding needs dim divisible by 4, got {dim}")
    feats = dim // 2
    eps, scale = 1e-6, 2 * math.pi
    y = torch.arange(1, h + 1, device=device, dtype=torch.float64) / (h + eps) * scale
    x = torch.arange(1, w + 1, device=device, dtype=torch.float64) / (w + eps) * scale
    k = torch.arange(feats // 2, device=device, dtype=torch.float64)
    freq = 10000.0 ** (2 * k / feats)  # (F/2,) one frequency per sin/cos pair

    def encode(p: Tensor) -> Tensor:  # (n,) -> (n, F), interleaved sin / cos
        angle = p[:, None] / freq
        return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(1)

    pos = torch.cat([encode(y)[:, None, :].expand(h, w, feats), encode(x)[None, :, :].expand(h, w, feats)], dim=-1)
    return pos.reshape(h * w, dim).to(dtype or torch.get_default_dtype())


def multi_head_attention(q: Tensor, k: Tensor, v: Tensor, heads: int, chunk_tokens: int | None = None) -> Tensor:
    """Scaled dot-product attention over ``heads`` heads, optionally in chunks of queries.

    Args:
        q: (B, Lq, C); k, v: (B, Lk, C), C divisible by ``heads``.
        chunk_tokens: at most this many queries per ``scaled_dot_product_attention`` call (None = all at once).
            Each query's softmax runs over all keys in every chunk, so the result does not depend on the chunking.
    Returns:
        (B, Lq, C), heads concatenated along channels (before any output projection).
    """
    b, lq, c = q.shape

    def split(t: Tensor) -> Tensor:  # (B, L, C) -> (B, heads, L, C / heads)
        return t.view(b, t.shape[1], heads, c // heads).transpose(1, 2)

    qh, kh, vh = split(q), split(k), split(v)
    if chunk_tokens is None or chunk_tokens >= lq:
        out = F.scaled_dot_product_attention(qh, kh, vh)
    else:
        out = torch.cat([F.scaled_dot_product_attention(part, kh, vh) for part in qh.split(chunk_tokens, dim=2)], dim=2)
    return out.transpose(1, 2).reshape(b, lq, c)


class TransformerLayer(nn.Module):
    """Pre-norm Transformer layer on a feature map: self-attention then FFN, both residual.

    ``t = t + Proj(Attn(LN(t) + pos, LN(t) + pos, LN(t)))``; ``t = t + FFN(LN(t))`` with FFN = Linear-GELU-Linear.

    Args:
        dim: channels C (divisible by ``heads``; by 4 for the position encoding).
        heads: attention heads.
        ffn: FFN hidden width.
        chunk_tokens: split the query axis into chunks of this size (None = no split); an attribute, so an
            evaluator may set it on a trained model.
    """

    def __init__(self, dim: int = 256, *, heads: int = 8, ffn: int = 1024, chunk_tokens: int | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"TransformerLayer dim ({dim}) must be divisible by heads ({heads})")
        self.heads, self.chunk_tokens = heads, chunk_tokens
        self.norm_attn = nn.LayerNorm(dim)
        self.qk = nn.Linear(dim, 2 * dim)  # queries and keys see the position, values do not
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), nn.Linear(ffn, dim))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        pos = sine_position_encoding(h, w, c, device=x.device, dtype=x.dtype)
        normed = self.norm_attn(tokens)
        q, k = self.qk(normed + pos).chunk(2, dim=-1)
        attn = multi_head_attention(q, k, self.v(normed), self.heads, self.chunk_tokens)
        tokens = tokens + self.proj(attn)
        tokens = tokens + self.ffn(self.norm_ffn(tokens))
        return tokens.transpose(1, 2).reshape(b, c, h, w)


class QueryCrossAttention(nn.Module):
    """Pre-norm residual cross-attention of the global tokens (SAN's queries) onto a feature map.

    ``q' = q + Proj(Attn(Wq(LN(q) + pos), Wk(f), Wv(f)))``: the optional ``query_pos`` (PAT: TokenMixer_g of the stage
    codebook) only shapes the attention query, and the feature map is read as it is (keys and values are linear
    projections of the features, without a norm or a position encoding), as PAT's Eq. (2) writes the update.

    Args:
        query_dim: Cq, width of the global tokens (240 for SAN ViT-B/16), divisible by ``heads``.
        kv_dim: Ck, width of the features read.
        heads: attention heads.
    """

    def __init__(self, query_dim: int, *, kv_dim: int, heads: int = 8):
        super().__init__()
        if query_dim % heads:
            raise ValueError(f"QueryCrossAttention query_dim ({query_dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.norm = nn.LayerNorm(query_dim)
        self.q = nn.Linear(query_dim, query_dim)
        self.k = nn.Linear(kv_dim, query_dim)
        self.v = nn.Linear(kv_dim, query_dim)
        self.proj = nn.Linear(query_dim, query_dim)

    def forward(self, queries: Tensor, feats: Tensor, query_pos: Tensor | None = None) -> Tensor:
        """Update the global tokens from a feature map.

        Args:
            queries: (B, Q, Cq).
            feats: (B, Ck, H, W) feature map, or (B, L, Ck) tokens.
            query_pos: optional (B, Q, Cq) or (Q, Cq), added to the normalised queries.
        Returns:
            (B, Q, Cq) updated queries.
        """
        if feats.dim() == 4:
            feats = feats.flatten(2).transpose(1, 2)
        normed = self.norm(queries)
        if query_pos is not None:
            normed = normed + query_pos
        attn = multi_head_attention(self.q(normed), self.k(feats), self.v(feats), self.heads)
        return queries + self.proj(attn)


class TokenLayer(nn.Module):
    """A pre-norm Transformer layer of the global tokens that reads a feature map (PAT's ``tokens`` decoder).

    ``q = q + CrossAttn(LN(q), f, f)``; ``q = q + Proj(SelfAttn(LN(q)))``; ``q = q + FFN(LN(q))``. The
    cross-attention is :class:`QueryCrossAttention` (Eq. 3's ``Attn(e_global, ẑ, ẑ)``); the tokens carry no position
    encoding, as SAN's queries carry none. Cost: Q x HW for the cross-attention, Q^2 for the self-attention, so
    linear in the image area.

    Args:
        query_dim: Cq, width of the global tokens (divisible by ``heads``).
        kv_dim: Ck, width of the feature map read.
        heads: attention heads of both attentions.
        ffn: FFN hidden width.
    """

    def __init__(self, query_dim: int, *, kv_dim: int, heads: int = 8, ffn: int = 1024):
        super().__init__()
        self.heads = heads
        self.cross = QueryCrossAttention(query_dim, kv_dim=kv_dim, heads=heads)
        self.norm_self = nn.LayerNorm(query_dim)
        self.qkv = nn.Linear(query_dim, 3 * query_dim)
        self.proj = nn.Linear(query_dim, query_dim)
        self.norm_ffn = nn.LayerNorm(query_dim)
        self.ffn = nn.Sequential(nn.Linear(query_dim, ffn), nn.GELU(), nn.Linear(ffn, query_dim))

    def forward(self, queries: Tensor, feats: Tensor) -> Tensor:
        """(B, Q, Cq) tokens, (B, Ck, H, W) feature map -> (B, Q, Cq) updated tokens."""
        queries = self.cross(queries, feats)
        q, k, v = self.qkv(self.norm_self(queries)).chunk(3, dim=-1)
        queries = queries + self.proj(multi_head_attention(q, k, v, self.heads))
        return queries + self.ffn(self.norm_ffn(queries))
