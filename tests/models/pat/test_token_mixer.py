"""TokenMixer: a token-axis MLP (K_in -> K_out) plus an optional channel Linear, checked against manual algebra."""

import pytest
import torch
import torch.nn.functional as F

from patseg.models.pat.token_mixer import TokenMixer


def _manual(mixer: TokenMixer, tokens: torch.Tensor) -> torch.Tensor:
    """Per channel column c: the 3-layer GELU MLP over the K_in token values, then the channel Linear per token."""
    layers = [m for m in mixer.token_mlp if isinstance(m, torch.nn.Linear)]
    out = torch.empty(mixer.out_tokens, tokens.shape[1], dtype=tokens.dtype)
    for c in range(tokens.shape[1]):
        x = tokens[:, c]  # (K_in,)
        x = F.gelu(layers[0].weight @ x + layers[0].bias)
        x = F.gelu(layers[1].weight @ x + layers[1].bias)
        out[:, c] = layers[2].weight @ x + layers[2].bias
    if mixer.channel_proj is not None:
        out = torch.stack([mixer.channel_proj.weight @ row + mixer.channel_proj.bias for row in out])
    return out


@pytest.mark.parametrize("dims", [(None, None), (6, 10)])
def test_equals_manual_mlp_on_transposed_tokens(dims):
    in_dim, out_dim = dims
    mixer = TokenMixer(in_tokens=8, out_tokens=5, hidden=12, in_dim=in_dim, out_dim=out_dim).double()
    tokens = torch.randn(8, 6, dtype=torch.float64)
    out = mixer(tokens)
    assert out.shape == (5, out_dim or 6)
    assert torch.allclose(out, _manual(mixer, tokens), atol=1e-12)


def test_batched_equals_unbatched_and_tokens_mix():
    mixer = TokenMixer(in_tokens=8, out_tokens=4, hidden=16, in_dim=6, out_dim=3).double()
    tokens = torch.randn(3, 8, 6, dtype=torch.float64)
    batched = mixer(tokens)
    assert batched.shape == (3, 4, 3)
    for b in range(3):
        assert torch.allclose(batched[b], mixer(tokens[b]), atol=1e-12)
    # every output token depends on every input token (mixing is across the token axis)
    perturbed = tokens.clone()
    perturbed[:, 7] += 1.0
    assert ((mixer(perturbed) - batched).abs().sum(-1) > 0).all()


def test_paper_sizes_and_parameter_count():
    stage = TokenMixer(in_tokens=128, out_tokens=64)
    assert stage(torch.randn(128, 32)).shape == (64, 32)
    expected = (128 * 256 + 256) + (256 * 256 + 256) + (256 * 64 + 64)
    assert sum(p.numel() for p in stage.parameters()) == expected
    to_global = TokenMixer(in_tokens=32, out_tokens=100, in_dim=32, out_dim=240)
    assert to_global(torch.randn(2, 32, 32)).shape == (2, 100, 240)
    expected_g = (32 * 256 + 256) + (256 * 256 + 256) + (256 * 100 + 100) + (32 * 240 + 240)
    assert sum(p.numel() for p in to_global.parameters()) == expected_g


def test_gradients_and_errors():
    mixer = TokenMixer(in_tokens=4, out_tokens=2, hidden=8)
    tokens = torch.randn(4, 3, requires_grad=True)
    mixer(tokens).sum().backward()
    assert tokens.grad.abs().sum() > 0
    assert all(p.grad is not None for p in mixer.parameters())
    with pytest.raises(ValueError, match="go together"):
        TokenMixer(in_tokens=4, out_tokens=2, in_dim=3)
    with pytest.raises(ValueError, match="expected tokens"):
        mixer(torch.randn(5, 3))
