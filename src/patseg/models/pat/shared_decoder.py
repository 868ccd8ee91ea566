"""PAT's shared decoder (Eq. 3): top-down, U-Net style fusion of the tokenized pyramid into the pixel latent.

For each kept stage, coarse to fine, the decoded map is resampled to the stage grid, modulated by that stage's
quantized codes through SPADE and refined by a Transformer layer; the global tokens then read the decoded map
(the "additional guidance" of §III-C). Two more Transformer layers run at the final grid. The same decoded map
feeds both image reconstruction and mask prediction; with ``cross_attend=False`` it is a pure pixel decoder that
needs no global tokens (the detachable tokenizer and the ``shared_decoder=False`` ablation).
"""

from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor, nn

from patseg.models.layers.resample import Resample
from patseg.models.layers.spade import SPADE
from patseg.models.layers.transformer import QueryCrossAttention, TransformerLayer


class DecoderStage(nn.Module):
    """ẑ = Transformer(SPADE(Resample(ẑ, grid_s), z_q_s)), then optionally q = q + CrossAttn(q, ẑ, ẑ)."""

    def __init__(
        self,
        *,
        dim: int,
        code_dim: int,
        factor: float,
        heads: int,
        ffn: int,
        spade_hidden: int,
        groups: int,
        query_dim: Optional[int],
        chunk_tokens: Optional[int],
    ) -> None:
        super().__init__()
        self.resample = Resample(dim, factor=factor, groups=groups)
        self.spade = SPADE(dim, cond_channels=code_dim, hidden=spade_hidden)
        self.transformer = TransformerLayer(dim, heads=heads, ffn=ffn, chunk_tokens=chunk_tokens)
        self.cross = QueryCrossAttention(query_dim, kv_dim=dim, heads=heads) if query_dim else None

    def forward(self, z: Tensor, codes: Tensor, queries: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        z = self.resample(z, size=codes.shape[-2:])
        z = self.transformer(self.spade(z, codes))
        if self.cross is not None and queries is not None:
            queries = self.cross(queries, z)
        return z, queries


class SharedDecoder(nn.Module):
    """Decoder of Eq. (3).

    Arguments:
        stages: decoder stages in decoding order with the resampling factor from the previous grid,
            e.g. (("late", 1), ("mid", 2), ("early", 2)).
        dim: decoder width (256); code_dim: width of the stage codes given to SPADE (32).
        query_dim: width of the global tokens, or None for a pixel-only decoder.
        extra_layers: Transformer layers at the final grid (2).
    """

    def __init__(
        self,
        *,
        stages: Sequence[tuple[str, float]],
        dim: int = 256,
        code_dim: int = 32,
        heads: int = 8,
        ffn: int = 1024,
        spade_hidden: int = 128,
        groups: int = 4,
        query_dim: Optional[int] = None,
        extra_layers: int = 2,
        chunk_tokens: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.names = [name for name, _ in stages]
        self.stages = nn.ModuleList(
            DecoderStage(
                dim=dim,
                code_dim=code_dim,
                factor=f,
                heads=heads,
                ffn=ffn,
                spade_hidden=spade_hidden,
                groups=groups,
                query_dim=query_dim,
                chunk_tokens=chunk_tokens,
            )
            for _, f in stages
        )
        self.extra = nn.ModuleList(
            TransformerLayer(dim, heads=heads, ffn=ffn, chunk_tokens=chunk_tokens) for _ in range(extra_layers)
        )

    def forward(
        self, latent: Tensor, codes: dict[str, Tensor], queries: Optional[Tensor] = None
    ) -> tuple[Tensor, Optional[Tensor]]:
        """Decode.

        Arguments:
            latent: (B, dim, h_late, w_late) post-quantized latent, already at the first stage's grid.
            codes: stage name -> (B, code_dim, h_s, w_s) quantized stage features z_q_s.
            queries: (B, Q, query_dim) global tokens, or None.
        Returns:
            (decoded map (B, dim, h_final, w_final), updated queries or None).
        """
        z = latent
        for name, stage in zip(self.names, self.stages):
            z, queries = stage(z, codes[name], queries)
        for layer in self.extra:
            z = layer(z)
        return z, queries
