"""SPADE against plain GroupNorm at zero modulation and against an explicit float64 loop."""

import math

import pytest
import torch
import torch.nn.functional as F

from patseg.models.layers.spade import SPADE, SPADEResBlock


def test_zero_gamma_beta_is_plain_group_norm():
    spade = SPADE(64, cond_channels=32)
    for conv in (spade.gamma, spade.beta):
        torch.nn.init.zeros_(conv.weight)
    x, cond = torch.randn(2, 64, 6, 5), torch.randn(2, 32, 3, 3)
    expected = torch.nn.GroupNorm(32, 64, affine=False)(x)
    torch.testing.assert_close(spade(x, cond), expected)


def test_init_is_close_to_plain_norm_and_parameter_count():
    spade = SPADE(256, cond_channels=32, hidden=128)
    x, cond = torch.randn(1, 256, 8, 8), torch.randn(1, 32, 8, 8)
    assert (spade(x, cond) - F.group_norm(x, 32)).abs().max() < 0.05
    # NVlabs/SPADE with ks = 3: shared 9*128*Cs + 128, gamma and beta 9*128*Cx + Cx each.
    assert sum(p.numel() for p in spade.parameters()) == (9 * 128 * 32 + 128) + 2 * (9 * 128 * 256 + 256)


def _conv3x3(inp, weight, bias):
    """Zero-padded 3x3 convolution (Cin, H, W) -> (Cout, H, W) by explicit sums."""
    cout, cin, kh, kw = weight.shape
    _, h, w = inp.shape
    out = torch.zeros(cout, h, w, dtype=torch.float64)
    for o in range(cout):
        for y in range(h):
            for x in range(w):
                acc = bias[o].item()
                for c in range(cin):
                    for dy in range(kh):
                        for dx in range(kw):
                            yy, xx = y + dy - kh // 2, x + dx - kw // 2
                            if 0 <= yy < h and 0 <= xx < w:
                                acc += weight[o, c, dy, dx].item() * inp[c, yy, xx].item()
                out[o, y, x] = acc
    return out


def _naive_spade(spade, x, cond, eps=1e-5):
    b, c, h, w = x.shape
    _, _, ch, cw = cond.shape
    g = spade.groups
    out = torch.zeros_like(x, dtype=torch.float64)
    for n in range(b):
        normed = torch.zeros(c, h, w, dtype=torch.float64)
        for k in range(g):
            chunk = x[n, k * c // g : (k + 1) * c // g].double()
            mean = chunk.mean()
            var = ((chunk - mean) ** 2).mean()  # biased variance, as GroupNorm
            normed[k * c // g : (k + 1) * c // g] = (chunk - mean) / math.sqrt(var + eps)
        # Nearest resize: destination index i reads source floor(i * in / out).
        resized = torch.stack(
            [torch.stack([cond[n, :, (i * ch) // h, (j * cw) // w] for j in range(w)], -1) for i in range(h)], -2
        ).double()
        conv0 = spade.shared[0]
        act = _conv3x3(resized, conv0.weight.double(), conv0.bias.double()).clamp_min(0)
        gamma = _conv3x3(act, spade.gamma.weight.double(), spade.gamma.bias.double())
        beta = _conv3x3(act, spade.beta.weight.double(), spade.beta.bias.double())
        out[n] = normed * (1 + gamma) + beta
    return out


@pytest.mark.parametrize("cond_size", [(2, 3), (4, 6)])
def test_matches_naive_reference(cond_size):
    spade = SPADE(4, cond_channels=3, hidden=5, groups=2).double()
    for conv in (spade.shared[0], spade.gamma, spade.beta):
        torch.nn.init.normal_(conv.weight, std=0.5)
        torch.nn.init.normal_(conv.bias, std=0.5)
    x = torch.randn(2, 4, 4, 6, dtype=torch.float64) * 3 + 1
    cond = torch.randn(2, 3, *cond_size, dtype=torch.float64)
    torch.testing.assert_close(spade(x, cond), _naive_spade(spade, x, cond), atol=1e-10, rtol=1e-10)


def test_gradients_reach_condition():
    spade = SPADE(32, cond_channels=8, hidden=16)
    cond = torch.randn(1, 8, 4, 4, requires_grad=True)
    (spade(torch.randn(1, 32, 4, 4), cond) * torch.randn(1, 32, 4, 4)).sum().backward()
    assert cond.grad.abs().sum() > 0


def test_rejects_indivisible_channels():
    with pytest.raises(ValueError, match="groups"):
        SPADE(48, cond_channels=32)


def _naive_resblock(block, x, cond):
    def leaky(t):
        return torch.where(t > 0, t, 0.2 * t)

    def conv(t, layer):
        return torch.stack([_conv3x3(t[n], layer.weight.double(), layer.bias.double()) for n in range(len(t))])

    dx = conv(leaky(_naive_spade(block.norm_0, x, cond)), block.conv_0)
    dx = conv(leaky(_naive_spade(block.norm_1, dx, cond)), block.conv_1)
    return x.double() + dx


def test_resblock_matches_naive_reference():
    block = SPADEResBlock(4, cond_channels=3, hidden=5, groups=2).double()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 4, 3, 4, dtype=torch.float64)
    cond = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(block(x, cond), _naive_resblock(block, x, cond), atol=1e-10, rtol=1e-10)
    # NVlabs/SPADE at constant width: two SPADEs and two 3x3 convs C -> C, no learned shortcut
    assert sum(p.numel() for p in block.parameters()) == 2 * (
        sum(p.numel() for p in block.norm_0.parameters()) + 9 * 4 * 4 + 4
    )
