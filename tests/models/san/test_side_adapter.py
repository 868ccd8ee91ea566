"""SAN's side adapter: parameter counts, fusion against a naive reference, block loop, stage hook, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from naive import bilinear_resize
from patseg.models.san.mask_decoder import MaskDecoder
from patseg.models.san.side_adapter import FusionLayer, SideAdapter

TINY_MAP = ((0, 0), (1, 1), (2, 2), (3, 3))  # a 4-layer tiny CLIP: taps 0..3 into side stages 0..3


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tiny(**kwargs) -> SideAdapter:
    cfg = {
        "clip_width": 32,
        "width": 48,
        "depth": 4,
        "heads": 4,
        "patch_size": 4,
        "num_queries": 5,
        "pretrain_grid": 4,
        "fusion_map": TINY_MAP,
    }
    cfg.update(kwargs)
    return SideAdapter(**cfg).eval()


def tiny_taps(batch: int = 2, grid: tuple[int, int] = (2, 3)) -> dict[int, torch.Tensor]:
    return {tap: torch.randn(batch, 32, *grid) for tap in range(4)}


def naive_fusion(layer: FusionLayer, patches: torch.Tensor, clip_map: torch.Tensor, grid) -> torch.Tensor:
    """Per-pixel LayerNorm over channels, matmul with the 1x1 conv weight, bilinear resize, add (float64)."""
    w = layer.proj.weight.detach().double()[:, :, 0, 0]
    g, b = layer.norm.weight.detach().double(), layer.norm.bias.detach().double()
    B, _, hc, wc = clip_map.shape
    proj = torch.zeros(B, w.shape[0], hc, wc, dtype=torch.float64)
    for n in range(B):
        for y in range(hc):
            for x in range(wc):
                v = clip_map[n, :, y, x].double()
                mean = v.sum() / v.numel()
                var = ((v - mean) ** 2).sum() / v.numel()
                normed = (v - mean) / math.sqrt(var + 1e-6) * g + b
                proj[n, :, y, x] = w @ normed + layer.proj.bias.detach().double()
    resized = torch.stack([bilinear_resize(proj[n], grid) for n in range(B)])
    return patches.double() + resized.flatten(2).transpose(1, 2)


def manual_loop(side: SideAdapter, images, taps, *, readd_pos: bool) -> list[torch.Tensor]:
    """The side forward written out block by block; returns the full token sequence after every block."""
    tokens, grid = side.patch_embed(images)
    pos = torch.cat([side.query_pos_embed, side.patch_pos_embed(grid)], dim=1)
    x = torch.cat([side.query_embed.expand(len(images), -1, -1), tokens], dim=1) + pos
    x = side.fuse(0, x, taps, grid)
    seqs = []
    for i, block in enumerate(side.blocks, start=1):
        x = side.fuse(i, block(x), taps, grid)
        seqs.append(x)
        if readd_pos:
            x = x + pos
    return seqs


@pytest.mark.parametrize(
    "clip_width, heads, fusion, total", [(768, 12, 744_384, 8_219_058), (1024, 16, 992_192, 8_730_034)]
)
def test_san_parameter_counts(clip_width: int, heads: int, fusion: int, total: int) -> None:
    # SAN's logged counts; the ViT-L total 8,730,034 = 9,321,650 - 590,848 (CLIP pos-embed) - 768 (bg_embed)
    side = SideAdapter(clip_width=clip_width)
    dec = MaskDecoder(query_dim=240, pixel_dim=240, clip_heads=heads)
    assert count(side.blocks) == 5_554_560 and count(side.patch_embed) == 184_560
    assert side.pos_embed.numel() == 384_000
    assert side.query_embed.numel() + side.query_pos_embed.numel() == 48_000
    assert count(side.fusion_layers) == fusion
    assert count(side) + count(dec) == total


def test_san_state_dict_keys_and_init() -> None:
    side = SideAdapter(clip_width=768)
    sd = side.state_dict()
    assert tuple(sd["pos_embed"].shape) == (1, 1600, 240) and tuple(sd["query_embed"].shape) == (1, 100, 240)
    assert tuple(sd["blocks.7.attn.qkv.weight"].shape) == (720, 240) and "blocks.7.mlp.fc2.bias" in sd
    assert tuple(sd["fusion_layers.3.proj.weight"].shape) == (240, 768, 1, 1)
    assert tuple(sd["fusion_layers.3.norm.weight"].shape) == (768,)
    assert side.blocks[0].norm1.eps == 1e-6
    proj = side.fusion_layers[1].proj  # c2_xavier: kaiming-uniform a=1 -> U(+-sqrt(3 / fan_in)), bias 0
    assert proj.weight.abs().max() <= math.sqrt(3 / 768) and proj.weight.std() > 0.8 * math.sqrt(1 / 768)
    assert torch.all(proj.bias == 0)
    for p in (side.query_embed, side.query_pos_embed, side.pos_embed, side.blocks[2].attn.qkv.weight):
        assert abs(p.std().item() - 0.02) < 0.002
    assert torch.all(side.blocks[2].attn.qkv.bias == 0)


def test_fusion_matches_naive_reference() -> None:
    layer = FusionLayer(clip_width=6, width=5).double()
    with torch.no_grad():
        layer.norm.weight.copy_(torch.randn(6))
        layer.norm.bias.copy_(torch.randn(6))
        layer.proj.bias.copy_(torch.randn(5))
    for clip_grid, grid in [((2, 3), (4, 5)), ((4, 4), (3, 2))]:  # upsampling and downsampling
        patches = torch.randn(2, grid[0] * grid[1], 5, dtype=torch.float64)
        clip_map = torch.randn(2, 6, *clip_grid, dtype=torch.float64) * 2 + 0.5
        ref = naive_fusion(layer, patches, clip_map, grid)
        torch.testing.assert_close(layer(patches, clip_map, grid), ref, rtol=1e-10, atol=1e-10)


def test_fuse_touches_patches_only_and_uses_the_mapped_tap() -> None:
    side = tiny()
    x = torch.randn(2, 5 + 12, 48)
    taps = tiny_taps()
    out = side.fuse(2, x, taps, (3, 4))
    torch.testing.assert_close(out[:, :5], x[:, :5], rtol=0, atol=0)
    torch.testing.assert_close(out[:, 5:], side.fusion_layers[2](x[:, 5:], taps[2], (3, 4)))
    torch.testing.assert_close(side.fuse(4, x, taps, (3, 4)), x, rtol=0, atol=0)  # stage 4 has no fusion
    with pytest.raises(KeyError, match="CLIP tap 3"):
        side.fuse(3, x, {0: taps[0]}, (3, 4))


def test_forward_equals_manual_block_loop_with_pos_readded() -> None:
    side = tiny()
    images, taps = torch.randn(2, 3, 12, 16), tiny_taps()
    out = side(images, taps, record_blocks=(1, 2, 3, 4))
    assert out.grid == (3, 4)
    seqs = manual_loop(side, images, taps, readd_pos=True)
    for i, seq in enumerate(seqs, start=1):
        torch.testing.assert_close(out.queries[i], seq[:, :5])
        torch.testing.assert_close(out.patches[i], seq[:, 5:].transpose(1, 2).reshape(2, 48, 3, 4))
    # the test can tell: without the re-added positional embedding, every block after the first differs
    plain = manual_loop(side, images, taps, readd_pos=False)
    torch.testing.assert_close(plain[0], seqs[0])
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(plain[1:], seqs[1:]))
    assert sorted(out.queries) == sorted(out.patches) == [1, 2, 3, 4]


def test_pos_embed_resized_bicubically_off_the_pretrain_grid() -> None:
    side = tiny()
    torch.testing.assert_close(side.patch_pos_embed((4, 4)), side.pos_embed, rtol=0, atol=0)
    pos = side.pos_embed.reshape(1, 4, 4, 48).permute(0, 3, 1, 2)
    ref = F.interpolate(pos, size=(3, 5), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(side.patch_pos_embed((3, 5)), ref)
    # a grid with the pretrain token count but another shape must still be resized (SAN compares counts only)
    assert not torch.allclose(side.patch_pos_embed((2, 8)), side.pos_embed)


def test_stage_hook_called_after_fusions_and_its_queries_used() -> None:
    side = tiny()
    images, taps = torch.randn(2, 3, 12, 16), tiny_taps()
    base = side(images, taps, record_blocks=(1, 2, 3, 4))
    calls = []

    def spy(stage, queries, patches, grid):
        calls.append((stage, tuple(queries.shape), tuple(patches.shape), grid))
        if stage == 2:  # patches arrive after the stage-2 fusion, i.e. what block 2 records
            torch.testing.assert_close(patches.transpose(1, 2).reshape(2, 48, 3, 4), base.patches[2])
        return queries

    same = side(images, taps, record_blocks=(1, 2, 3, 4), stage_hook=spy)
    assert calls == [(s, (2, 5, 48), (2, 12, 48), (3, 4)) for s in (1, 2, 3)]  # no call at stage 0 or 4
    torch.testing.assert_close(same.queries[4], base.queries[4], rtol=0, atol=0)

    def zero_at_2(stage, queries, patches, grid):
        return torch.zeros_like(queries) if stage == 2 else queries

    hooked = side(images, taps, record_blocks=(1, 2, 3, 4), stage_hook=zero_at_2)
    for name in ("queries", "patches"):
        torch.testing.assert_close(getattr(hooked, name)[1], getattr(base, name)[1], rtol=0, atol=0)
    torch.testing.assert_close(hooked.patches[2], base.patches[2], rtol=0, atol=0)
    assert torch.all(hooked.queries[2] == 0)
    assert (hooked.patches[3] - base.patches[3]).abs().max() > 1e-3
    assert (hooked.queries[4] - base.queries[4]).abs().max() > 1e-3

    with pytest.raises(ValueError, match="stage_hook returned"):
        side(images, taps, record_blocks=(4,), stage_hook=lambda s, q, p, g: q[:, :2])


def test_queries_and_patches_attend_jointly() -> None:
    side = tiny()
    images, taps = torch.randn(1, 3, 12, 16), tiny_taps(batch=1)
    base = side(images, taps, record_blocks=(1,))
    changed = images.clone()
    changed[..., 4:8, 8:12] += torch.randn(3, 4, 4)  # one 4x4 patch: (row 1, column 2)
    out = side(changed, taps, record_blocks=(1,))
    assert (out.queries[1] - base.queries[1]).abs().amax(dim=-1).min() > 1e-4  # every query saw the patch
    with torch.no_grad():
        side.query_embed[:, 0] += torch.randn(48)  # random, not constant: LayerNorm would remove a shift
    moved = side(images, taps, record_blocks=(1,))
    assert (moved.patches[1] - base.patches[1]).abs().amax(dim=1).min() > 1e-4  # every patch saw the queries


def test_gradient_reaches_every_parameter() -> None:
    side = tiny().train()
    dec = MaskDecoder(query_dim=48, pixel_dim=48, dim=16, clip_heads=2)
    out = side(torch.randn(2, 3, 12, 20), tiny_taps(), record_blocks=(3, 4))  # grid 3x5: pos-embed resized
    loss = sum(
        dec(out.queries[b], out.patches[b]).masks.square().mean()
        + dec(out.queries[b], out.patches[b]).attn_bias.square().mean()
        for b in (3, 4)
    )
    loss.backward()
    for name, p in [*side.named_parameters(), *dec.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_input_checks() -> None:
    side = tiny()
    with pytest.raises(ValueError, match="divisible"):
        side(torch.randn(1, 3, 13, 16), tiny_taps(batch=1))
    with pytest.raises(ValueError, match="record_blocks"):
        side(torch.randn(1, 3, 12, 16), tiny_taps(batch=1), record_blocks=(5,))
    with pytest.raises(ValueError, match="fusion_map"):
        tiny(fusion_map=((0, 0), (1, 0)))
