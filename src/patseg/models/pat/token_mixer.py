"""TokenMixer: an MLP across the token axis that links codebooks of different sizes (PAT §III, Eq. 2).

PAT writes ``ê_mid = HSAttn(e_mid + TokenMixer(ê_early), z_mid, z_mid)``: the 128 mean-shifted early codes must
become 64 mid-stage tokens, and later 32 late-stage tokens; TokenMixer_g turns a stage's K_s tokens into the 100
global tokens and widens them from the 32-d code space to the side ViT's 240 channels. The paper says only
"3-layer MLP"; like MLP-Mixer's token-mixing block, it acts on the token axis with weights shared over channels, so
every output token is a learned combination of all input tokens (the number of tokens, not their width, changes).
Hidden width 256 and GELU are our choice, as is the separate channel Linear for TokenMixer_g.
"""

from __future__ import annotations

from torch import Tensor, nn


class TokenMixer(nn.Module):
    """Maps a token set ``(K_in, D)`` to ``(K_out, D_out)`` by a token-axis MLP and an optional channel Linear.

    Arguments:
        in_tokens: K_in, number of input tokens.
        out_tokens: K_out, number of output tokens.
        hidden: width of the two hidden layers of the token MLP.
        in_dim, out_dim: channel widths for the optional Linear ``in_dim -> out_dim`` applied after the token MLP
            (TokenMixer_g: 32 -> 240). Give both or neither; without them the channel width is unchanged.

    Token MLP: Linear(K_in, hidden) - GELU - Linear(hidden, hidden) - GELU - Linear(hidden, K_out), applied to each
    channel's column of token values, i.e. to the transposed tensor ``(..., D, K_in)``.
    """

    def __init__(
        self,
        *,
        in_tokens: int,
        out_tokens: int,
        hidden: int = 256,
        in_dim: int | None = None,
        out_dim: int | None = None,
    ) -> None:
        super().__init__()
        if (in_dim is None) != (out_dim is None):
            raise ValueError(f"in_dim and out_dim go together, got in_dim={in_dim}, out_dim={out_dim}")
        self.in_tokens = in_tokens
        self.out_tokens = out_tokens
        self.token_mlp = nn.Sequential(
            nn.Linear(in_tokens, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, out_tokens),
        )
        self.channel_proj: nn.Linear | None = None
        if in_dim is not None and out_dim is not None:
            self.channel_proj = nn.Linear(in_dim, out_dim)

    def extra_repr(self) -> str:
        return f"in_tokens={self.in_tokens}, out_tokens={self.out_tokens}"

    def forward(self, tokens: Tensor) -> Tensor:
        """Mix tokens.

        Arguments:
            tokens: ``(K_in, D)`` or ``(B, K_in, D)``.
        Returns:
            ``(K_out, D_out)`` or ``(B, K_out, D_out)``, with ``D_out = out_dim`` if given, else ``D``.
        """
        if tokens.dim() not in (2, 3) or tokens.shape[-2] != self.in_tokens:
            raise ValueError(f"expected tokens of shape ([B,] {self.in_tokens}, D), got {tuple(tokens.shape)}")
        mixed = self.token_mlp(tokens.transpose(-1, -2)).transpose(-1, -2)  # (..., K_out, D)
        if self.channel_proj is not None:
            mixed = self.channel_proj(mixed)  # (..., K_out, D_out)
        return mixed
