"""Decoder attention blocks against explicit float64 attention, and the sine encoding against its formula."""

import math

import pytest
import torch

from patseg.models.layers.transformer import (
    QueryCrossAttention,
    TokenLayer,
    TransformerLayer,
    sine_position_encoding,
)


def test_sine_encoding_values_match_formula():
    h, w, dim = 3, 4, 8
    pos = sine_position_encoding(h, w, dim, dtype=torch.float64)
    assert pos.shape == (h * w, dim)
    feats = dim // 2
    for y in range(h):
        for x in range(w):
            row = pos[y * w + x]
            for axis, (p, n) in enumerate([(y + 1, h), (x + 1, w)]):
                a = p / (n + 1e-6) * 2 * math.pi
                for k in range(feats // 2):
                    t = 10000 ** (2 * k / feats)
                    assert row[axis * feats + 2 * k].item() == pytest.approx(math.sin(a / t), abs=1e-12)
                    assert row[axis * feats + 2 * k + 1].item() == pytest.approx(math.cos(a / t), abs=1e-12)


def test_sine_encoding_rejects_bad_dim():
    with pytest.raises(ValueError, match="divisible by 4"):
        sine_position_encoding(2, 2, 6)


def _layer_norm(t, ln):
    mean = t.mean(-1, keepdim=True)
    var = ((t - mean) ** 2).mean(-1, keepdim=True)
    return (t - mean) / torch.sqrt(var + ln.eps) * ln.weight.double() + ln.bias.double()


def _linear(t, lin):
    return t @ lin.weight.double().T + lin.bias.double()


def _naive_attention(q, k, v, heads):
    """(L, C) x (M, C) -> (L, C): explicit per-head, per-query softmax in float64."""
    lq, c = q.shape
    d = c // heads
    out = torch.zeros(lq, c, dtype=torch.float64)
    for hd in range(heads):
        sl = slice(hd * d, (hd + 1) * d)
        for i in range(lq):
            scores = torch.tensor(
                [(q[i, sl] * k[j, sl]).sum().item() / math.sqrt(d) for j in range(k.shape[0])], dtype=torch.float64
            )
            weights = torch.exp(scores - scores.max())
            weights = weights / weights.sum()
            out[i, sl] = (weights[:, None] * v[:, sl]).sum(0)
    return out


def _naive_layer(layer, x):
    b, c, h, w = x.shape
    out = torch.zeros_like(x)
    pos = torch.zeros(h * w, c, dtype=torch.float64)
    for y in range(h):
        for xx in range(w):
            for axis, (p, n) in enumerate([(y + 1, h), (xx + 1, w)]):
                a = p / (n + 1e-6) * 2 * math.pi
                for j in range(c // 2):
                    t = 10000 ** (2 * (j // 2) / (c // 2))
                    pos[y * w + xx, axis * c // 2 + j] = math.sin(a / t) if j % 2 == 0 else math.cos(a / t)
    wq, wk = layer.qk.weight.double().chunk(2, 0)
    bq, bk = layer.qk.bias.double().chunk(2, 0)
    for n in range(b):
        t = x[n].reshape(c, h * w).T
        normed = _layer_norm(t, layer.norm_attn)
        q = (normed + pos) @ wq.T + bq
        k = (normed + pos) @ wk.T + bk
        v = _linear(normed, layer.v)
        t = t + _linear(_naive_attention(q, k, v, layer.heads), layer.proj)
        hidden = _linear(_layer_norm(t, layer.norm_ffn), layer.ffn[0])
        hidden = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))  # exact GELU
        t = t + _linear(hidden, layer.ffn[2])
        out[n] = t.T.reshape(c, h, w)
    return out


def _randomise(module):
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.3)


def test_transformer_layer_matches_naive_attention():
    layer = TransformerLayer(8, heads=2, ffn=12).double()
    _randomise(layer)
    x = torch.randn(2, 8, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(layer(x), _naive_layer(layer, x), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("chunk", [1, 5, 7, 100])
def test_transformer_layer_chunked_equals_unchunked(chunk):
    layer = TransformerLayer(16, heads=4, ffn=32)
    x = torch.randn(2, 16, 5, 7)
    full = layer(x)
    layer.chunk_tokens = chunk
    torch.testing.assert_close(layer(x), full, atol=1e-6, rtol=1e-5)


def test_transformer_layer_is_position_aware_and_trains():
    layer = TransformerLayer(16, heads=4, ffn=32)
    x = torch.randn(1, 16, 3, 3, requires_grad=True)
    # Without a position encoding the layer would commute with any shuffle of the tokens.
    perm = torch.randperm(9)
    shuffled = x.flatten(2)[..., perm].view(1, 16, 3, 3)
    out = layer(x)
    assert (layer(shuffled).flatten(2) - out.flatten(2)[..., perm]).abs().max() > 1e-3
    out.square().sum().backward()
    assert x.grad.abs().sum() > 0 and layer.qk.weight.grad.abs().sum() > 0


def _naive_cross(block, queries, feats, pos):
    out = torch.zeros_like(queries)
    for n in range(queries.shape[0]):
        normed = _layer_norm(queries[n], block.norm)
        if pos is not None:
            normed = normed + (pos if pos.dim() == 2 else pos[n])
        attn = _naive_attention(
            _linear(normed, block.q), _linear(feats[n], block.k), _linear(feats[n], block.v), block.heads
        )
        out[n] = queries[n] + _linear(attn, block.proj)
    return out


@pytest.mark.parametrize("pos_kind", [None, "shared", "batched"])
def test_query_cross_attention_matches_naive(pos_kind):
    block = QueryCrossAttention(6, kv_dim=4, heads=3).double()
    _randomise(block)
    queries = torch.randn(2, 5, 6, dtype=torch.float64)
    fmap = torch.randn(2, 4, 2, 3, dtype=torch.float64)
    pos = {
        None: None,
        "shared": torch.randn(5, 6, dtype=torch.float64),
        "batched": torch.randn(2, 5, 6, dtype=torch.float64),
    }[pos_kind]
    tokens = fmap.flatten(2).transpose(1, 2)
    expected = _naive_cross(block, queries, tokens, pos)
    torch.testing.assert_close(block(queries, fmap, pos), expected, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(block(queries, tokens, pos), expected, atol=1e-10, rtol=1e-10)


def test_query_cross_attention_gradients():
    block = QueryCrossAttention(8, kv_dim=16, heads=2)
    queries = torch.randn(1, 3, 8, requires_grad=True)
    feats = torch.randn(1, 16, 2, 2, requires_grad=True)
    pos = torch.randn(1, 3, 8, requires_grad=True)
    block(queries, feats, pos).square().sum().backward()
    assert all(t.grad.abs().sum() > 0 for t in (queries, feats, pos))


def _naive_token_layer(layer, queries, fmap):
    """Cross-attention to the map (as _naive_cross), then self-attention among the tokens, then the FFN; float64."""
    feats = fmap.flatten(2).transpose(1, 2)
    t = _naive_cross(layer.cross, queries, feats, None)
    out = torch.zeros_like(t)
    c = t.shape[-1]
    for n in range(t.shape[0]):
        row = t[n]
        qkv = _linear(_layer_norm(row, layer.norm_self), layer.qkv)
        q, k, v = qkv[:, :c], qkv[:, c : 2 * c], qkv[:, 2 * c :]
        row = row + _linear(_naive_attention(q, k, v, layer.heads), layer.proj)
        hidden = _linear(_layer_norm(row, layer.norm_ffn), layer.ffn[0])
        hidden = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))  # exact GELU
        out[n] = row + _linear(hidden, layer.ffn[2])
    return out


def test_token_layer_matches_naive():
    layer = TokenLayer(6, kv_dim=4, heads=3, ffn=10).double()
    _randomise(layer)
    queries = torch.randn(2, 5, 6, dtype=torch.float64)
    fmap = torch.randn(2, 4, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(layer(queries, fmap), _naive_token_layer(layer, queries, fmap), atol=1e-10, rtol=1e-10)


def test_token_layer_reads_the_map_and_mixes_the_tokens():
    """Every token sees every pixel and every other token; gradients reach the map and all weights."""
    layer = TokenLayer(8, kv_dim=4, heads=2, ffn=16)
    queries = torch.randn(1, 3, 8, requires_grad=True)
    fmap = torch.randn(1, 4, 2, 2, requires_grad=True)
    out = layer(queries, fmap)
    grad = torch.autograd.grad(out[0, 0].sum(), [queries, fmap], retain_graph=True)
    assert grad[0][0, 1].abs().sum() > 0 and grad[0][0, 2].abs().sum() > 0  # token 0 reads tokens 1 and 2
    assert (grad[1][0].abs().sum(0) > 0).all()  # ... and every pixel
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
