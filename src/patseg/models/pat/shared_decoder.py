"""PAT's shared decoder (Eq. 3): top-down, U-Net style fusion of the tokenized pyramid into the pixel latent.

The latent codes enter through PostQuant; for each kept stage, coarse to fine, the decoded map ẑ is resampled to the
stage grid and modulated by that stage's quantized codes through SPADE, and the global tokens then read ẑ (the
"additional guidance" of §III-C). The same ẑ feeds image reconstruction and mask prediction. ẑ never reads the
global tokens, so a decoder called without them is a pure pixel decoder (the detachable tokenizer, rFID).

Where the "Transformer" of "3 256-dim Transformer+SPADE ... followed by 2 extra Transformer layers" lives is a
reading (``pat.decoder``):

- ``tokens`` (Eq. 3 as written): pixels are decoded by resampling and SPADE alone; each Transformer layer belongs
  to the global tokens (cross-attention to ẑ, self-attention among the tokens, FFN), one per stage and two more
  after the last stage. Linear in the image area.
- ``pixels``: each stage also runs a self-attention Transformer layer over the pixel grid, the tokens only
  cross-attend to ẑ, and the two extra layers refine ẑ. Quadratic in the image area.
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence

from torch import Tensor, nn

from patseg.models.layers.common import Conv1x1
from patseg.models.layers.resample import Resample
from patseg.models.layers.spade import SPADE, SPADEResBlock
from patseg.models.layers.transformer import QueryCrossAttention, TokenLayer, TransformerLayer

Reading = Literal["tokens", "pixels"]
SpadeBlock = Literal["norm", "resblock"]


class DecoderStage(nn.Module):
    """ẑ = SPADE(Resample(ẑ, grid_s), z_q_s) (plus a pixel Transformer under ``pixels``); q = Update(q, ẑ).

    ``tokens`` is the global-token update: a :class:`TokenLayer` under the ``tokens`` reading, a residual
    :class:`QueryCrossAttention` under ``pixels``, None in a decoder without global tokens.
    """

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
        reading: Reading,
        spade_block: SpadeBlock,
        chunk_tokens: Optional[int],
    ) -> None:
        super().__init__()
        self.resample = Resample(dim, factor=factor, groups=groups)
        block = SPADE if spade_block == "norm" else SPADEResBlock
        self.spade = block(dim, cond_channels=code_dim, hidden=spade_hidden)
        self.transformer = (
            TransformerLayer(dim, heads=heads, ffn=ffn, chunk_tokens=chunk_tokens) if reading == "pixels" else None
        )
        self.tokens: Optional[nn.Module] = None
        if query_dim is not None:
            self.tokens = (
                TokenLayer(query_dim, kv_dim=dim, heads=heads, ffn=ffn)
                if reading == "tokens"
                else QueryCrossAttention(query_dim, kv_dim=dim, heads=heads)
            )

    def forward(self, z: Tensor, codes: Tensor, queries: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        z = self.spade(self.resample(z, size=codes.shape[-2:]), codes)
        if self.transformer is not None:
            z = self.transformer(z)
        if self.tokens is not None and queries is not None:
            queries = self.tokens(queries, z)
        return z, queries


class SharedDecoder(nn.Module):
    """Decoder of Eq. (3), from the latent codes to the decoded map ẑ (and the updated global tokens).

    Arguments:
        stages: decoder stages in decoding order, each with its resampling factor from the previous grid (the first
            from the latent's side grid), e.g. (("late", 1), ("mid", 2), ("early", 2)); empty = decode the latent alone.
        dim: decoder width C_dec (256); code_dim: width of the latent and stage codes (32).
        query_dim: width of the global tokens, or None for a pixel-only decoder.
        extra_layers: Transformer layers after the last stage (2): on the tokens (``tokens``) or on ẑ (``pixels``).
        reading: ``tokens`` or ``pixels`` (module docstring); spade_block: plain SPADE (``norm``) or SPADE's
            residual block (``resblock``) on the pixel path.
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
        reading: Reading = "tokens",
        spade_block: SpadeBlock = "norm",
        chunk_tokens: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.names = [name for name, _ in stages]
        self.reading = reading
        self.post_quant = Conv1x1(code_dim, dim)  # PostQuant of the latent codes, D -> C_dec
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
                reading=reading,
                spade_block=spade_block,
                chunk_tokens=chunk_tokens,
            )
            for _, f in stages
        )
        extra: list[nn.Module] = []
        if reading == "pixels":
            extra = [
                TransformerLayer(dim, heads=heads, ffn=ffn, chunk_tokens=chunk_tokens) for _ in range(extra_layers)
            ]
        elif query_dim is not None:
            extra = [TokenLayer(query_dim, kv_dim=dim, heads=heads, ffn=ffn) for _ in range(extra_layers)]
        self.extra = nn.ModuleList(extra)

    def forward(
        self, latent: Tensor, codes: dict[str, Tensor], queries: Optional[Tensor] = None
    ) -> tuple[Tensor, Optional[Tensor]]:
        """Decode.

        Arguments:
            latent: (B, D, h, w) quantized latent z_latent at the side grid.
            codes: stage name -> (B, D, h_s, w_s) quantized stage features z_q_s (the kept stages at least).
            queries: (B, Q, query_dim) global tokens, or None to decode pixels only.
        Returns:
            (decoded map ẑ (B, C_dec, h_final, w_final), updated queries or None).
        """
        z = self.post_quant(latent)
        for name, stage in zip(self.names, self.stages):
            z, queries = stage(z, codes[name], queries)
        for layer in self.extra:
            if self.reading == "pixels":
                z = layer(z)
            elif queries is not None:
                queries = layer(queries, z)
        return z, queries
