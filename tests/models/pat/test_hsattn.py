"""HSAttn (Eq. 1) and its vmf=False ablation against float64 loop references."""

import math

import pytest
import torch

from patseg.models.pat.hsattn import hs_attention


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / math.sqrt(float((x * x).sum()))


def _naive_attention(q, k, v, *, kappa=30.0, vmf=True, allowed=None):
    """Loop per batch item and query: weights exp(logit) over allowed keys, normalised, then the weighted sum."""
    batch, num_q, dim = q.shape
    out = torch.zeros(batch, num_q, v.shape[-1], dtype=torch.float64)
    for b in range(batch):
        for i in range(num_q):
            logits = []
            for j in range(k.shape[1]):
                if allowed is not None and not allowed[b, i, j]:
                    logits.append(None)
                elif vmf:
                    logits.append(kappa * float(_unit(q[b, i]) @ _unit(k[b, j])))
                else:
                    logits.append(float(q[b, i] @ k[b, j]) / math.sqrt(dim))
            top = max(x for x in logits if x is not None)
            weights = [0.0 if x is None else math.exp(x - top) for x in logits]
            total = sum(weights)
            mean = sum(w / total * v[b, j] for j, w in enumerate(weights))
            out[b, i] = _unit(mean) if vmf else mean
    return out


@pytest.fixture
def qkv():
    return (
        torch.randn(2, 5, 4, dtype=torch.float64),
        torch.randn(2, 7, 4, dtype=torch.float64),
        torch.randn(2, 7, 3, dtype=torch.float64),
    )


def test_equals_naive_eq1(qkv):
    q, k, v = qkv
    out = hs_attention(q, k, v, kappa=30.0)
    assert out.shape == (2, 5, 3)
    assert torch.allclose(out, _naive_attention(q, k, v, kappa=30.0), atol=1e-12)
    assert torch.allclose(out.norm(dim=-1), torch.ones(2, 5, dtype=torch.float64), atol=1e-12)


def test_kappa_matters(qkv):
    q, k, v = qkv
    assert not torch.allclose(hs_attention(q, k, v, kappa=1.0), hs_attention(q, k, v, kappa=30.0), atol=1e-3)
    assert torch.allclose(hs_attention(q, k, v, kappa=3.0), _naive_attention(q, k, v, kappa=3.0), atol=1e-12)


def test_invariant_to_positive_row_scaling_of_q_and_k(qkv):
    q, k, v = qkv
    q_scale = torch.rand(2, 5, 1, dtype=torch.float64) * 10 + 0.1
    k_scale = torch.rand(2, 7, 1, dtype=torch.float64) * 10 + 0.1
    assert torch.allclose(hs_attention(q * q_scale, k * k_scale, v), hs_attention(q, k, v), atol=1e-12)
    # ...but not to scaling the values row-wise (v is not normalised: it is a weighted mean of raw values)
    v_scale = torch.rand(2, 7, 1, dtype=torch.float64) * 10 + 0.1
    assert not torch.allclose(hs_attention(q, k, v * v_scale), hs_attention(q, k, v), atol=1e-3)


def test_large_kappa_picks_the_nearest_key_by_cosine(qkv):
    q, k, v = qkv
    cosines = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(k, dim=-1).transpose(1, 2)
    top2 = cosines.topk(2, dim=-1).values
    assert (top2[..., 0] - top2[..., 1]).min() > 2e-3  # margin * kappa >> log(Nk): a clear winner per query
    nearest = cosines.argmax(dim=-1)  # (B, Nq)
    expected = torch.nn.functional.normalize(torch.gather(v, 1, nearest.unsqueeze(-1).expand(-1, -1, 3)), dim=-1)
    assert torch.allclose(hs_attention(q, k, v, kappa=1e4), expected, atol=1e-6)


def test_plain_attention_when_not_vmf(qkv):
    q, k, v = qkv
    out = hs_attention(q, k, v, vmf=False)
    assert torch.allclose(out, _naive_attention(q, k, v, vmf=False), atol=1e-12)
    assert not torch.allclose(out.norm(dim=-1), torch.ones(2, 5, dtype=torch.float64), atol=1e-3)


@pytest.mark.parametrize("vmf", [True, False])
def test_mask_bool_and_additive(qkv, vmf):
    q, k, v = qkv
    allowed = torch.rand(2, 5, 7) > 0.4
    allowed[..., 0] = True  # every query keeps at least one key
    expected = _naive_attention(q, k, v, vmf=vmf, allowed=allowed)
    assert torch.allclose(hs_attention(q, k, v, vmf=vmf, mask=allowed), expected, atol=1e-12)
    additive = torch.zeros(2, 5, 7, dtype=torch.float64).masked_fill(~allowed, float("-inf"))
    assert torch.allclose(hs_attention(q, k, v, vmf=vmf, mask=additive), expected, atol=1e-12)
    assert not torch.allclose(hs_attention(q, k, v, vmf=vmf), expected, atol=1e-3)


def test_gradients_and_bad_arguments(qkv):
    q, k, v = (t.clone().requires_grad_(True) for t in qkv)
    out = hs_attention(q, k, v, kappa=20.0)
    (out * torch.randn_like(out)).sum().backward()
    for t in (q, k, v):
        assert t.grad is not None and t.grad.abs().sum() > 0
    # the gradient w.r.t. q is tangent to q's sphere: scaling q does not change the output
    assert torch.allclose((q.grad * q).sum(-1), torch.zeros(2, 5, dtype=torch.float64), atol=1e-10)
    with pytest.raises(ValueError, match="kappa"):
        hs_attention(*qkv, kappa=0.0)
    hs_attention(*qkv, kappa=0.0, vmf=False)  # the plain-attention ablation has no kappa
    with pytest.raises(ValueError, match="widths"):
        hs_attention(qkv[0], qkv[1][..., :3], qkv[2])
