"""SAN's side adapter network: a small plain ViT whose patch tokens receive CLIP features.

Port of MendelXu/SAN ``san/model/side_adapter/side_adapter.py`` (``RegionwiseSideAdapterNetwork``) and the
``AddFusion`` layer of ``san/model/layers.py``. The side ViT is randomly
initialised; learnable query tokens (PAT's *global tokens*) are prepended to the patch tokens and attend jointly
with them. After side stage 0 (the embedding) and after some blocks, a CLIP tap is projected and added to the
patch tokens. PAT's semantic branch (``PyramidStage.semantic``) hooks in right after the fusions at stages >= 1.

Submodule names follow SAN's checkpoint keys (``side_adapter_network.vit_model.*`` -> ``blocks.N.*``,
``patch_embed.proj``, ``pos_embed``; ``fusion_layers.layer_S.input_proj.{0,1}`` -> ``fusion_layers.N.{norm,proj}``
where N is the position of (tap, S) in ``fusion_map``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from patseg.models.layers.common import Conv1x1, LayerNorm2d

StageHook = Callable[[int, Tensor, Tensor, tuple[int, int]], Tensor]
"""hook(stage, queries (B, Q, C), patch_tokens (B, L, C), grid (h, w)) -> new queries (B, Q, C)."""


@dataclass
class SideOutput:
    """Side ViT features recorded after selected blocks (1-based block indices).

    queries: block index -> (B, Q, C) query tokens.
    patches: block index -> (B, C, h, w) patch-token maps.
    grid: (h, w), the side patch grid (H / patch_size, W / patch_size).
    """

    queries: dict[int, Tensor]
    patches: dict[int, Tensor]
    grid: tuple[int, int]


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens with a strided conv (timm's PatchEmbed without its size checks)."""

    def __init__(self, patch_size: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """(B, 3, H, W) -> tokens (B, h*w, C) in row-major order, and the grid (h, w)."""
        x = self.proj(images)
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])


class FusionLayer(nn.Module):
    """SAN's add-fusion: CLIP map -> channel LayerNorm -> 1x1 conv -> bilinear resize -> add to patch tokens."""

    def __init__(self, clip_width: int, width: int) -> None:
        super().__init__()
        self.norm = LayerNorm2d(clip_width, eps=1e-6)
        self.proj = Conv1x1(clip_width, width)
        # detectron2's c2_xavier_fill, as SAN's fusion layer uses
        nn.init.kaiming_uniform_(self.proj.weight, a=1)
        assert self.proj.bias is not None  # built with bias=True
        nn.init.zeros_(self.proj.bias)

    def forward(self, patches: Tensor, clip_map: Tensor, grid: tuple[int, int]) -> Tensor:
        """patches (B, h*w, C), clip_map (B, C_clip, hc, wc) at any grid -> patches + projected map (B, h*w, C)."""
        y = self.proj(self.norm(clip_map))
        y = F.interpolate(y, size=grid, mode="bilinear", align_corners=False)
        return patches + y.flatten(2).transpose(1, 2)


class SideAdapter(nn.Module):
    """The side ViT with query tokens and CLIP fusion (SAN ``vit_w240n6d8_patch16``).

    Args:
        clip_width: channel width of the CLIP taps (768 for ViT-B, 1024 for ViT-L).
        width, depth, heads, patch_size, mlp_ratio: side ViT shape (SAN: 240, 8, 6, 16, 4).
        num_queries: number of learnable query tokens (SAN: 100).
        pretrain_grid: side grid the positional embedding is stored at (640 / 16 = 40); resized bicubically.
        fusion_map: (CLIP tap index, side stage) pairs; stage 0 = after the embedding, stage i = after block i.
    """

    def __init__(
        self,
        *,
        clip_width: int,
        width: int = 240,
        depth: int = 8,
        heads: int = 6,
        patch_size: int = 16,
        mlp_ratio: float = 4.0,
        num_queries: int = 100,
        pretrain_grid: int = 40,
        fusion_map: Sequence[tuple[int, int]] = ((0, 0), (3, 1), (6, 2), (9, 3)),
    ) -> None:
        super().__init__()
        stages = [stage for _, stage in fusion_map]
        if len(set(stages)) != len(stages) or not all(0 <= s <= depth for s in stages):
            raise ValueError(f"fusion_map side stages must be distinct and in 0..{depth}, got {tuple(fusion_map)}")
        self.patch_size = patch_size
        self.pretrain_grid = pretrain_grid
        self.fusion_map = tuple((int(tap), int(stage)) for tap, stage in fusion_map)
        self.patch_embed = PatchEmbed(patch_size, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, pretrain_grid * pretrain_grid, width))
        self.query_embed = nn.Parameter(torch.zeros(1, num_queries, width))
        self.query_pos_embed = nn.Parameter(torch.zeros(1, num_queries, width))
        # timm Block: pre-norm, qkv bias, GELU, LayerNorm eps 1e-6, fused SDPA attention; no layer scale
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio=mlp_ratio, qkv_bias=True) for _ in range(depth))
        self.fusion_layers = nn.ModuleList(FusionLayer(clip_width, width) for _ in self.fusion_map)
        self._init_weights()

    def _init_weights(self) -> None:
        # SAN: queries N(0, 0.02); timm ViT: pos-embed and every block Linear trunc-normal 0.02, Linear bias 0
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.query_embed, std=0.02)
        nn.init.normal_(self.query_pos_embed, std=0.02)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    @property
    def num_queries(self) -> int:
        return self.query_embed.shape[1]

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def width(self) -> int:
        return self.query_embed.shape[2]

    def patch_pos_embed(self, grid: tuple[int, int]) -> Tensor:
        """(1, h*w, C) patch positional embedding, bicubically resized from the pretrain grid when it differs."""
        g = self.pretrain_grid
        if tuple(grid) == (g, g):
            return self.pos_embed
        pos = self.pos_embed.reshape(1, g, g, -1).permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=grid, mode="bicubic", align_corners=False)
        return pos.flatten(2).transpose(1, 2)

    def fuse(self, stage: int, x: Tensor, clip_taps: dict[int, Tensor], grid: tuple[int, int]) -> Tensor:
        """Add the CLIP tap mapped to ``stage`` (if any) to the patch part of x (B, Q + h*w, C); queries untouched."""
        for layer, (tap, target) in zip(self.fusion_layers, self.fusion_map):
            if target != stage:
                continue
            if tap not in clip_taps:
                raise KeyError(f"side stage {stage} fuses CLIP tap {tap}, but clip_taps has {sorted(clip_taps)}")
            q = self.num_queries
            return torch.cat([x[:, :q], layer(x[:, q:], clip_taps[tap], grid)], dim=1)
        return x

    def forward(
        self,
        images: Tensor,
        clip_taps: dict[int, Tensor],
        *,
        record_blocks: Sequence[int] = (7, 8),
        stage_hook: StageHook | None = None,
        initial_queries: Tensor | None = None,
    ) -> SideOutput:
        """Run the side ViT, fusing CLIP taps and recording the tokens after ``record_blocks``.

        Args:
            images: (B, 3, H, W) normalised images; H and W divisible by ``patch_size``.
            clip_taps: CLIP tap index -> (B, C_clip, hc, wc) feature map, at any grid.
            record_blocks: 1-based side block indices whose outputs are returned.
            stage_hook: called right after the fusion at every fused stage >= 1 (see ``StageHook``); the
                queries it returns replace the query tokens before the next block.
            initial_queries: (B, Q, C) query tokens to start from instead of the learned ``query_embed``
                (PAT's unified-tokens ablation builds them from the stage codebooks).
        Returns:
            SideOutput with (B, Q, C) queries and (B, C, h, w) patch maps per recorded block.
        """
        h_img, w_img = images.shape[-2:]
        depth = len(self.blocks)
        if h_img % self.patch_size or w_img % self.patch_size:
            raise ValueError(f"image size {h_img}x{w_img} is not divisible by the patch size {self.patch_size}")
        if not all(1 <= b <= depth for b in record_blocks):
            raise ValueError(f"record_blocks must lie in 1..{depth}, got {tuple(record_blocks)}")

        tokens, grid = self.patch_embed(images)
        batch, q = tokens.shape[0], self.num_queries
        pos = torch.cat([self.query_pos_embed, self.patch_pos_embed(grid)], dim=1)
        queries = self.query_embed.expand(batch, -1, -1) if initial_queries is None else initial_queries
        x = torch.cat([queries, tokens], dim=1) + pos
        x = self.fuse(0, x, clip_taps, grid)

        hook_stages = {stage for _, stage in self.fusion_map}  # block indices >= 1 only: stage 0 is not hooked
        out = SideOutput(queries={}, patches={}, grid=grid)
        for i, block in enumerate(self.blocks, start=1):
            x = self.fuse(i, block(x), clip_taps, grid)
            if stage_hook is not None and i in hook_stages:
                queries = stage_hook(i, x[:, :q], x[:, q:], grid)
                if queries.shape != x[:, :q].shape:
                    raise ValueError(f"stage_hook returned {tuple(queries.shape)}, expected {tuple(x[:, :q].shape)}")
                x = torch.cat([queries, x[:, q:]], dim=1)
            if i in record_blocks:
                out.queries[i] = x[:, :q]
                out.patches[i] = x[:, q:].transpose(1, 2).reshape(batch, -1, *grid)
            if i < depth:  # SAN re-adds the positional embedding after every block except the last
                x = x + pos
        return out
