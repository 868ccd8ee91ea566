"""VMFQuantizer against float64 loop references (ViT-VQGAN cosine VQ and the Euclidean Table II ablation)."""

import math

import pytest
import torch
import torch.nn.functional as F

from patseg.models.pat import vmf_quantizer
from patseg.models.pat.vmf_quantizer import VMFQuantizer


def _quantizer(num_codes: int = 7, code_dim: int = 4, vmf: bool = True) -> VMFQuantizer:
    return VMFQuantizer(num_codes=num_codes, code_dim=code_dim, vmf=vmf).double()


def _naive_indices(z: torch.Tensor, codebook: torch.Tensor, vmf: bool) -> torch.Tensor:
    """Loop over positions and codes: argmax cosine (vmf) or argmin Euclidean distance (raw codes)."""
    batch, _, height, width = z.shape
    out = torch.empty(batch, height, width, dtype=torch.long)
    for b in range(batch):
        for h in range(height):
            for w in range(width):
                x = z[b, :, h, w]
                best, best_k = None, -1
                for k in range(codebook.shape[0]):
                    e = codebook[k]
                    if vmf:
                        score = float(x @ e) / (float(x.norm()) * float(e.norm()))
                        better = best is None or score > best
                    else:
                        score = float(((x - e) ** 2).sum())
                        better = best is None or score < best
                    if better:
                        best, best_k = score, k
                out[b, h, w] = best_k
    return out


@pytest.mark.parametrize("vmf", [True, False])
def test_indices_match_loop(vmf):
    quantizer = _quantizer(vmf=vmf)
    z = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    out = quantizer(z)
    assert out.indices.dtype == torch.long and out.indices.shape == (2, 3, 5)
    assert torch.equal(out.indices, _naive_indices(z, quantizer.codebook.detach(), vmf))


def test_cosine_and_euclidean_lookups_differ():
    """The two modes are genuinely different rules: a long vector near a short code picks it only by cosine."""
    quantizer = _quantizer(num_codes=2, code_dim=2, vmf=True)
    with torch.no_grad():
        quantizer.codebook.copy_(torch.tensor([[0.1, 0.0], [3.0, 3.0]], dtype=torch.float64))
    z = torch.tensor([3.0, 0.5], dtype=torch.float64).view(1, 2, 1, 1)
    assert quantizer(z).indices.item() == 0
    quantizer.vmf = False
    assert quantizer(z).indices.item() == 1


@pytest.mark.parametrize("vmf", [True, False])
def test_forward_value_equals_lookup(vmf):
    quantizer = _quantizer(vmf=vmf)
    z = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    out = quantizer(z)
    assert torch.equal(out.z_q, quantizer.lookup(out.indices))
    if vmf:
        assert torch.allclose(out.z_q.norm(dim=1), torch.ones(2, 3, 3, dtype=torch.float64))
    else:
        assert torch.equal(out.z_q, quantizer.codebook.detach()[out.indices].permute(0, 3, 1, 2))


@pytest.mark.parametrize("vmf", [True, False])
def test_straight_through_gradient(vmf):
    quantizer = _quantizer(vmf=vmf)
    z = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    quantizer(z).z_q.backward(upstream)
    expected = upstream.clone()
    if vmf:  # the gradient is pushed through ẑ = z / |z|
        z_ref = z.detach().clone().requires_grad_(True)
        (F.normalize(z_ref, dim=1) * upstream).sum().backward()
        expected = z_ref.grad
    assert torch.allclose(z.grad, expected, atol=1e-12)


def _naive_loss(
    z: torch.Tensor, codebook: torch.Tensor, vmf: bool, beta: float, normalise: bool = True
) -> torch.Tensor:
    """mean((ê - sg ẑ)^2) + β mean((sg ê - ẑ)^2) over all B*H*W*D elements, by a loop over positions.

    Raw codes (not ``vmf``): inputs and codes are divided by s = sqrt(mean over positions of |ê|^2), a constant for
    the gradient; ``normalise=False`` gives the plain Euclidean loss instead.
    """
    indices = _naive_indices(z.detach(), codebook.detach(), vmf)
    codes = F.normalize(codebook, dim=-1) if vmf else codebook
    scale = 1.0
    if not vmf and normalise:
        norms_sq = [float((codes[k].detach() ** 2).sum()) for k in indices.flatten().tolist()]
        scale = math.sqrt(sum(norms_sq) / len(norms_sq))
    codebook_term, commit_term, count = 0.0, 0.0, 0
    batch, dim, height, width = z.shape
    for b in range(batch):
        for h in range(height):
            for w in range(width):
                x = z[b, :, h, w]
                x = x / x.norm() if vmf else x / scale
                e = codes[indices[b, h, w]] / scale
                codebook_term = codebook_term + ((e - x.detach()) ** 2).sum()
                commit_term = commit_term + ((e.detach() - x) ** 2).sum()
                count += dim
    return codebook_term / count + beta * commit_term / count


@pytest.mark.parametrize("vmf", [True, False])
def test_loss_value_and_codebook_gradient(vmf):
    quantizer = _quantizer(vmf=vmf)
    z = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    out = quantizer(z)
    out.loss.backward()

    z_ref = z.detach().clone().requires_grad_(True)
    codebook_ref = quantizer.codebook.detach().clone().requires_grad_(True)
    expected = _naive_loss(z_ref, codebook_ref, vmf, beta=0.25)
    expected.backward()
    assert torch.allclose(out.loss, expected, rtol=1e-10)
    assert torch.allclose(quantizer.codebook.grad, codebook_ref.grad, atol=1e-12)
    assert torch.allclose(z.grad, z_ref.grad, atol=1e-12)
    used = torch.zeros(7, dtype=torch.bool)
    used[out.indices.unique()] = True
    assert (quantizer.codebook.grad[used].abs().sum(-1) > 0).all()
    assert (quantizer.codebook.grad[~used] == 0).all()


def test_euclidean_loss_is_scale_normalised():
    """Without vMF the loss sees inputs and codes in units of the chosen codes' RMS norm: scaling both by 10 leaves
    it (and the choice) unchanged, while the plain Euclidean loss grows 100-fold; z_q stays the raw code."""
    quantizer = _quantizer(vmf=False)
    z = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    base = quantizer(z)
    with torch.no_grad():
        quantizer.codebook.mul_(10.0)
    scaled = quantizer(10.0 * z)
    assert torch.equal(scaled.indices, base.indices)
    torch.testing.assert_close(scaled.z_q, 10.0 * base.z_q, rtol=1e-15, atol=0)
    assert scaled.loss.item() == pytest.approx(base.loss.item(), rel=1e-12)
    codebook = quantizer.codebook.detach()
    plain, plain_scaled = (
        _naive_loss(x, c, False, 0.25, normalise=False) for x, c in ((z, codebook / 10), (10 * z, codebook))
    )
    assert plain_scaled.item() == pytest.approx(100 * plain.item(), rel=1e-10)


def test_codebook_gradient_from_downstream_codes():
    """HSAttn reads codes(): the segmentation loss must reach every code through it, beside the VQ loss."""
    quantizer = _quantizer(vmf=True)
    weights = torch.randn(7, 4, dtype=torch.float64)
    (quantizer.codes() * weights).sum().backward()
    codebook_ref = quantizer.codebook.detach().clone().requires_grad_(True)
    (F.normalize(codebook_ref, dim=-1) * weights).sum().backward()
    assert torch.allclose(quantizer.codebook.grad, codebook_ref.grad, atol=1e-12)
    assert (quantizer.codebook.grad.abs().sum(-1) > 0).all()

    quantizer.codebook.grad = None
    z = torch.randn(1, 4, 2, 2, dtype=torch.float64)
    total = quantizer(z).loss + (quantizer.codes() * weights).sum()
    total.backward()
    assert torch.allclose(quantizer.codebook.grad, codebook_ref.grad + _loss_grad(quantizer, z), atol=1e-12)


def _loss_grad(quantizer: VMFQuantizer, z: torch.Tensor) -> torch.Tensor:
    codebook_ref = quantizer.codebook.detach().clone().requires_grad_(True)
    _naive_loss(z, codebook_ref, quantizer.vmf, beta=quantizer.commitment).backward()
    return codebook_ref.grad


def test_codes_are_unit_when_vmf_and_raw_otherwise():
    quantizer = _quantizer(vmf=True)
    assert torch.allclose(quantizer.codes().norm(dim=-1), torch.ones(7, dtype=torch.float64))
    quantizer.vmf = False
    assert torch.equal(quantizer.codes(), quantizer.codebook)


def test_perplexity_is_exp_entropy_of_histogram():
    quantizer = _quantizer(num_codes=7)
    z = torch.randn(3, 4, 4, 4, dtype=torch.float64)
    out = quantizer(z)
    counts = [0] * 7
    for index in out.indices.flatten().tolist():
        counts[index] += 1
    total = sum(counts)
    entropy = -sum(c / total * math.log(c / total) for c in counts if c > 0)
    assert out.perplexity.item() == pytest.approx(math.exp(entropy), rel=1e-6)


def test_perplexity_extremes():
    quantizer = _quantizer(num_codes=4, code_dim=4)
    with torch.no_grad():
        quantizer.codebook.copy_(torch.eye(4, dtype=torch.float64))
    one_code = torch.zeros(1, 4, 2, 2, dtype=torch.float64)
    one_code[:, 2] = 1.0
    assert quantizer(one_code).perplexity.item() == pytest.approx(1.0)
    uniform = torch.eye(4, dtype=torch.float64).view(4, 4, 1, 1).permute(1, 0, 2, 3).reshape(1, 4, 2, 2)
    assert quantizer(uniform).perplexity.item() == pytest.approx(4.0)


def test_dead_codes_tracking():
    quantizer = _quantizer(num_codes=5, code_dim=5)
    with torch.no_grad():
        quantizer.codebook.copy_(torch.eye(5, dtype=torch.float64))
    hits_0_and_3 = torch.zeros(1, 5, 1, 2, dtype=torch.float64)
    hits_0_and_3[0, 0, 0, 0] = 1.0
    hits_0_and_3[0, 3, 0, 1] = 1.0
    assert quantizer.dead_codes() == 5
    quantizer.train()
    quantizer(hits_0_and_3)
    quantizer(hits_0_and_3)
    assert quantizer.dead_codes() == 3
    assert quantizer.code_hits.tolist() == [2, 0, 0, 2, 0]
    quantizer.eval()  # evaluation does not count
    quantizer(torch.eye(5, dtype=torch.float64).view(5, 5, 1, 1))
    assert quantizer.dead_codes() == 3
    quantizer.reset_usage()
    assert quantizer.dead_codes() == 5
    assert "code_hits" not in quantizer.state_dict()


def test_chunked_search_equals_single_chunk(monkeypatch):
    quantizer = _quantizer(num_codes=7)
    z = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    whole = quantizer(z).indices
    monkeypatch.setattr(vmf_quantizer, "_SEARCH_CHUNK_ELEMENTS", 7 * 3)  # 3 rows per chunk, 17 chunks
    assert torch.equal(quantizer(z).indices, whole)


def test_lookup_runs_in_float32_under_autocast():
    quantizer = VMFQuantizer(num_codes=16, code_dim=8)
    z = torch.randn(2, 8, 4, 4)
    reference = quantizer(z)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = quantizer(z)
    assert out.z_q.dtype == torch.float32
    assert torch.equal(out.indices, reference.indices)
    assert torch.equal(out.z_q, reference.z_q)


def test_init_and_shape_errors():
    quantizer = VMFQuantizer(num_codes=4096, code_dim=32)
    assert isinstance(quantizer.codebook, torch.nn.Parameter)
    assert abs(quantizer.codebook.mean().item()) < 0.02 and abs(quantizer.codebook.std().item() - 1) < 0.02
    with pytest.raises(ValueError, match="expected z"):
        quantizer(torch.randn(1, 16, 2, 2))
