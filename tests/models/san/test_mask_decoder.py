"""SAN's MLP mask decoder against a float64 loop reference; parameter counts; shared layers of models/common.py."""

from __future__ import annotations

import math

import pytest
import torch

from patseg.models.layers.common import MLP, LayerNorm2d
from patseg.models.san.mask_decoder import MaskDecoder


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def naive_mlp(layers, v: list[float]) -> list[float]:
    """One vector through Linear / 1x1-conv layers with ReLU between, written as explicit sums."""
    for i, layer in enumerate(layers):
        w = layer.weight.detach().double().reshape(layer.weight.shape[0], -1)
        b = layer.bias.detach().double()
        v = [sum(w[o, k].item() * v[k] for k in range(len(v))) + b[o].item() for o in range(w.shape[0])]
        if i < len(layers) - 1:
            v = [max(x, 0.0) for x in v]
    return v


def naive_decoder(dec: MaskDecoder, queries: torch.Tensor, pixels: torch.Tensor):
    """masks[b,q,y,x] = <Q[b,q], P[b,:,y,x]>; bias[b,n,q,y,x] = w <Q[b,q], A[b,n*dim:(n+1)*dim,y,x]> + b0."""
    B, Q, _ = queries.shape
    _, _, H, W = pixels.shape
    d, heads = dec.dim, dec.clip_heads
    masks = torch.zeros(B, Q, H, W, dtype=torch.float64)
    bias = torch.zeros(B, heads, Q, H, W, dtype=torch.float64)
    scale, shift = 1.0, 0.0
    if isinstance(dec.bias_scaling, torch.nn.Linear):
        scale, shift = dec.bias_scaling.weight.item(), dec.bias_scaling.bias.item()
    for b in range(B):
        qe = [naive_mlp(dec.query_mlp.layers, queries[b, q].double().tolist()) for q in range(Q)]
        for y in range(H):
            for x in range(W):
                pix = pixels[b, :, y, x].double().tolist()
                pe = naive_mlp(dec.pix_mlp.layers, pix)
                ae = naive_mlp(dec.attn_mlp.layers, pix)
                for q in range(Q):
                    masks[b, q, y, x] = sum(qe[q][c] * pe[c] for c in range(d))
                    for n in range(heads):
                        dot = sum(qe[q][c] * ae[n * d + c] for c in range(d))
                        bias[b, n, q, y, x] = scale * dot + shift
    return masks, bias


@pytest.mark.parametrize("rescale", [True, False])
def test_decoder_matches_loop_reference(rescale: bool) -> None:
    dec = MaskDecoder(query_dim=6, pixel_dim=5, dim=4, num_layers=3, clip_heads=3, rescale_attn_bias=rescale)
    if rescale:
        with torch.no_grad():  # non-trivial affine so a missing rescale is caught
            dec.bias_scaling.weight.fill_(1.7)
            dec.bias_scaling.bias.fill_(-0.3)
    queries, pixels = torch.randn(2, 3, 6), torch.randn(2, 5, 3, 2)
    out = dec.double()(queries.double(), pixels.double())
    ref_masks, ref_bias = naive_decoder(dec, queries, pixels)
    assert out.masks.shape == (2, 3, 3, 2) and out.attn_bias.shape == (2, 3, 3, 3, 2)
    torch.testing.assert_close(out.masks, ref_masks, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.attn_bias, ref_bias, rtol=1e-10, atol=1e-10)


def test_heads_differ_and_follow_channel_layout() -> None:
    """Zeroing the attn MLP's output rows of head 1 (channels dim..2*dim) must zero exactly that head's bias."""
    dec = MaskDecoder(query_dim=8, pixel_dim=8, dim=4, num_layers=2, clip_heads=3, rescale_attn_bias=False)
    last = dec.attn_mlp.layers[-1]
    with torch.no_grad():
        last.weight[4:8].zero_()
        last.bias[4:8].zero_()
    out = dec(torch.randn(1, 5, 8), torch.randn(1, 8, 3, 3))
    assert torch.all(out.attn_bias[:, 1] == 0)
    assert out.attn_bias[:, 0].abs().min() > 0 and out.attn_bias[:, 2].abs().min() > 0
    assert not torch.allclose(out.attn_bias[:, 0], out.attn_bias[:, 2])


@pytest.mark.parametrize("heads, attn_mlp, total", [(12, 916_992, 1_303_554), (16, 1_180_160, 1_566_722)])
def test_san_parameter_counts(heads: int, attn_mlp: int, total: int) -> None:
    dec = MaskDecoder(query_dim=240, pixel_dim=240, clip_heads=heads)
    assert count(dec.query_mlp) == 193_280 and count(dec.pix_mlp) == 193_280
    assert count(dec.attn_mlp) == attn_mlp
    assert count(dec) == total
    assert count(MaskDecoder(query_dim=240, pixel_dim=240, clip_heads=heads, rescale_attn_bias=False)) == total - 2


def test_san_state_dict_keys_and_shapes() -> None:
    """Keys and shapes of SAN's released ``side_adapter_network.mask_decoder.*`` (san_vitb16_state_dict.tsv)."""
    dec = MaskDecoder(query_dim=240, pixel_dim=240, clip_heads=12)
    shapes = {k: tuple(v.shape) for k, v in dec.state_dict().items()}
    assert shapes["query_mlp.layers.0.weight"] == (256, 240)
    assert shapes["pix_mlp.layers.0.weight"] == (256, 240, 1, 1)
    assert shapes["attn_mlp.layers.2.weight"] == (3072, 256, 1, 1)
    assert shapes["bias_scaling.weight"] == (1, 1) and shapes["bias_scaling.bias"] == (1,)
    assert len(shapes) == 20


def test_gradient_reaches_every_parameter() -> None:
    dec = MaskDecoder(query_dim=6, pixel_dim=7, dim=8, clip_heads=2)
    queries = torch.randn(2, 4, 6, requires_grad=True)
    out = dec(queries, torch.randn(2, 7, 3, 3))
    (out.masks.square().mean() + out.attn_bias.square().mean()).backward()
    for name, p in dec.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert queries.grad.abs().sum() > 0


def test_layernorm2d_matches_per_pixel_reference() -> None:
    norm = LayerNorm2d(5, eps=1e-6).double()
    with torch.no_grad():
        norm.weight.copy_(torch.randn(5))
        norm.bias.copy_(torch.randn(5))
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64) * 3 + 1
    ref = torch.empty_like(x)
    for b in range(2):
        for y in range(3):
            for i in range(4):
                v = x[b, :, y, i].tolist()
                mean = sum(v) / 5
                var = sum((a - mean) ** 2 for a in v) / 5
                for c in range(5):
                    ref[b, c, y, i] = (v[c] - mean) / math.sqrt(var + 1e-6) * norm.weight[c] + norm.bias[c]
    torch.testing.assert_close(norm(x), ref, rtol=1e-10, atol=1e-10)
    assert not isinstance(norm, torch.nn.LayerNorm)  # SAN applies weight decay to this norm


def test_mlp_token_and_map_forms_agree() -> None:
    tokens, maps = MLP(5, 7, 3, 3), MLP(5, 7, 3, 3, on_maps=True)
    with torch.no_grad():
        for lin, conv in zip(tokens.layers, maps.layers):
            conv.weight.copy_(lin.weight[:, :, None, None])
            conv.bias.copy_(lin.bias)
    x = torch.randn(2, 5, 4, 3)
    torch.testing.assert_close(maps(x), tokens(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
    assert tokens(-torch.ones(1, 5)).shape == (1, 3)
    with pytest.raises(ValueError):
        MLP(5, 7, 3, 0)


def test_masks_alone_skip_the_bias_branch() -> None:
    """``with_bias=False`` gives the same masks and no bias; the attention MLP is not run (no gradient reaches it)."""
    dec = MaskDecoder(query_dim=6, pixel_dim=5, dim=4, num_layers=3, clip_heads=3)
    queries, pixels = torch.randn(2, 3, 6), torch.randn(2, 5, 4, 4)
    full = dec(queries, pixels)
    alone = dec(queries, pixels, with_bias=False)
    assert alone.attn_bias is None
    torch.testing.assert_close(alone.masks, full.masks, rtol=0, atol=0)
    alone.masks.sum().backward()
    assert all(p.grad is None for p in dec.attn_mlp.parameters())
    assert all(p.grad is not None for p in dec.pix_mlp.parameters())


@pytest.mark.parametrize("grid", [(2, 2), (5, 7)])
def test_both_product_orders_match_the_loop_reference(grid) -> None:
    """Maps with fewer pixels than queries are embedded first, larger ones fold the last layer: both are exact."""
    dec = MaskDecoder(query_dim=6, pixel_dim=5, dim=4, num_layers=3, clip_heads=2).double()
    with torch.no_grad():
        dec.bias_scaling.weight.fill_(0.6)
        dec.bias_scaling.bias.fill_(0.2)
    queries, pixels = torch.randn(1, 9, 6).double(), torch.randn(1, 5, *grid).double()
    out = dec(queries, pixels)
    ref_masks, ref_bias = naive_decoder(dec, queries, pixels)
    torch.testing.assert_close(out.masks, ref_masks, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.attn_bias, ref_bias, rtol=1e-10, atol=1e-10)


def _strided_map(layout: str, tokens: torch.Tensor) -> torch.Tensor:
    """(B, 15, 6) tokens -> a (B, 6, 3, 5) map: contiguous, channels-last (tokens viewed as a map), or neither."""
    as_map = tokens.transpose(1, 2).reshape(tokens.shape[0], 6, 3, 5)
    if layout == "contiguous":
        return as_map.contiguous()
    return as_map if layout == "channels_last" else as_map.transpose(2, 3)  # a transposed map: a third layout


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "other"])
@pytest.mark.parametrize("bias", [True, False])
def test_conv1x1_equals_the_convolution_on_every_layout(layout: str, bias: bool) -> None:
    """Contiguous and channels-last maps take the matrix-product paths; values and gradients are the convolution's,
    and a channels-last map keeps its layout for the next 1x1 layer."""
    from patseg.models.layers.common import Conv1x1

    conv = Conv1x1(6, 4, bias=bias).double()
    tokens = torch.randn(2, 15, 6, dtype=torch.float64, requires_grad=True)
    x = _strided_map(layout, tokens)
    out = conv(x)
    ref = torch.nn.functional.conv2d(x.contiguous(), conv.weight, conv.bias)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    if layout == "channels_last":
        assert not x.is_contiguous() and out.is_contiguous(memory_format=torch.channels_last)
    (grad, wgrad) = torch.autograd.grad(out.square().sum(), (tokens, conv.weight))
    (ref_grad, ref_wgrad) = torch.autograd.grad(ref.square().sum(), (tokens, conv.weight))
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(wgrad, ref_wgrad, rtol=1e-12, atol=1e-12)
    assert conv.state_dict().keys() == ({"weight", "bias"} if bias else {"weight"})
    assert conv.weight.shape == (4, 6, 1, 1)


def test_gradients_equal_those_of_the_unfolded_decoder() -> None:
    """Training sees the same gradients as with the bias map applied after the products (SAN's form)."""
    dec = MaskDecoder(query_dim=6, pixel_dim=5, dim=4, num_layers=3, clip_heads=2).double()
    with torch.no_grad():
        dec.bias_scaling.weight.fill_(0.8)
        dec.bias_scaling.bias.fill_(-0.1)
    queries, pixels = torch.randn(1, 3, 6).double(), torch.randn(1, 5, 4, 4).double()

    def unfolded() -> torch.Tensor:
        q = dec.query_mlp(queries)
        p, a = dec.pix_mlp(pixels), dec.attn_mlp(pixels).view(1, 2, 4, 4, 4)
        bias = dec.bias_scaling(torch.einsum("bqc,bnchw->bnqhw", q, a).unsqueeze(-1)).squeeze(-1)
        return torch.einsum("bqc,bchw->bqhw", q, p).square().sum() + bias.sin().sum()

    def folded() -> torch.Tensor:
        out = dec(queries, pixels)
        return out.masks.square().sum() + out.attn_bias.sin().sum()

    params = list(dec.parameters())
    expected = torch.autograd.grad(unfolded(), params)
    for got, want in zip(torch.autograd.grad(folded(), params), expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert expected[-1].abs().item() > 0  # bias_scaling's offset gets a gradient
