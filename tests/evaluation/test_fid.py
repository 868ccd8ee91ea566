import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.inception import InceptionA

from patseg.evaluation import (
    FeatureMoments,
    FIDInceptionV3,
    ReconstructionFID,
    frechet_distance,
    load_fid_inception,
)
from patseg.evaluation.fid import FIDInceptionA, FIDInceptionE


def naive_fid(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """FID from explicit statistics; the matrix square root via eigen-decompositions of symmetric matrices:
    Tr((S1 S2)^1/2) = Tr((S1^1/2 S2 S1^1/2)^1/2)."""
    mu_a, mu_b = feats_a.mean(0), feats_b.mean(0)
    s_a, s_b = np.cov(feats_a, rowvar=False), np.cov(feats_b, rowvar=False)
    w, v = np.linalg.eigh(s_a)
    root_a = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    trace_root = np.sqrt(np.clip(inner, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * trace_root)


class TinyExtractor(nn.Module):
    """A small random feature extractor: (B, 3, H, W) in [0, 1] -> (B, 6)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2)

    def forward(self, x):
        return torch.tanh(self.conv(x)).mean((2, 3)) * 3


def test_frechet_distance_matches_naive():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 5))
    b = rng.normal(size=(50, 5)) @ rng.normal(size=(5, 5)) * 0.7 + 0.3
    ref = naive_fid(a, b)
    got = frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert got == pytest.approx(ref, rel=1e-9)
    assert frechet_distance(a.mean(0), np.cov(a, rowvar=False), a.mean(0), np.cov(a, rowvar=False)) == pytest.approx(
        0.0, abs=1e-8
    )


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_singular_covariances_give_a_finite_distance():
    mu = np.zeros(3)
    s1 = np.outer([1.0, 0, 0], [1.0, 0, 0])
    s2 = np.outer([0, 1.0, 0], [0, 1.0, 0])
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(2.0, abs=1e-6)


def test_non_finite_square_root_retries_with_offset(monkeypatch):
    import scipy.linalg

    real_sqrtm, seen = scipy.linalg.sqrtm, []

    def flaky_sqrtm(a):
        seen.append(a.copy())
        return np.full_like(a, np.inf) if len(seen) == 1 else real_sqrtm(a)

    monkeypatch.setattr(scipy.linalg, "sqrtm", flaky_sqrtm)
    s1, s2 = np.diag([1.0, 2.0]), np.diag([3.0, 0.5])
    got = frechet_distance(np.zeros(2), s1, np.ones(2), s2, eps=1e-3)
    expected_trace_root = np.sqrt(1.001 * 3.001) + np.sqrt(2.001 * 0.501)
    assert len(seen) == 2 and np.allclose(seen[1], (s1 + 1e-3 * np.eye(2)) @ (s2 + 1e-3 * np.eye(2)))
    assert got == pytest.approx(2.0 + 3.0 + 3.5 - 2 * expected_trace_root, rel=1e-12)


def test_imaginary_square_root_is_an_error(monkeypatch):
    import scipy.linalg

    monkeypatch.setattr(scipy.linalg, "sqrtm", lambda a: a + 0.5j * np.eye(len(a)))
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2))


def test_feature_moments_match_numpy():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(23, 4)) * 5 + 10
    moments = FeatureMoments()
    for chunk in np.array_split(feats, 4):
        moments.update(torch.from_numpy(chunk).float())
    stats = moments.stats()
    f32 = feats.astype(np.float32).astype(np.float64)  # the features were float32 tensors
    np.testing.assert_allclose(stats.mu, f32.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(f32, rowvar=False), rtol=1e-9, atol=1e-9)
    assert stats.n == 23
    with pytest.raises(ValueError, match="no features"):
        FeatureMoments().stats()


def test_reconstruction_fid_with_tiny_extractor_matches_naive():
    extractor = TinyExtractor().eval()
    originals = torch.rand(24, 3, 12, 12)
    recons = (originals + 0.2 * torch.randn_like(originals)).clamp(0, 1)
    metric = ReconstructionFID(extractor)
    for i in range(0, 24, 10):
        metric.update(originals[i : i + 10], recons[i : i + 10])
    result = metric.compute()
    with torch.no_grad():
        ref = naive_fid(extractor(originals).double().numpy(), extractor(recons).double().numpy())
    assert result.num_images == 24
    assert result.fid == pytest.approx(ref, rel=1e-6)
    same = ReconstructionFID(extractor)
    same.update(originals, originals)
    assert same.compute().fid == pytest.approx(0.0, abs=1e-8)


def test_fid_blocks_pool_like_the_tf_graph():
    torch.manual_seed(0)
    x = torch.randn(1, 192, 7, 7)
    fid_block, tv_block = FIDInceptionA(192, pool_features=32).eval(), InceptionA(192, pool_features=32).eval()
    tv_block.load_state_dict(fid_block.state_dict())
    with torch.no_grad():
        pooled = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
        expected_pool_branch = fid_block.branch_pool(pooled)
        out = fid_block(x)
        assert torch.allclose(out[:, -32:], expected_pool_branch)
        assert not torch.allclose(out, tv_block(x))  # torchvision counts the zero padding
        block_e = FIDInceptionE(64, max_pool=True).eval()
        out_e = block_e(x[:, :64])
        assert torch.allclose(out_e[:, -192:], block_e.branch_pool(F.max_pool2d(x[:, :64], 3, 1, 1)))


def test_fid_inception_loads_local_weights_and_gives_2048_features(tmp_path):
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05"):
        load_fid_inception(tmp_path / "missing.pth")
    model = FIDInceptionV3()
    keys = model.net.state_dict().keys()
    assert "fc.weight" in keys and model.net.fc.out_features == 1008 and not any("AuxLogits" in k for k in keys)
    path = tmp_path / "inception.pth"
    torch.save(model.net.state_dict(), path)
    loaded = load_fid_inception(path)
    assert not loaded.training
    with torch.no_grad():
        feats = loaded(torch.rand(1, 3, 40, 50))
    assert feats.shape == (1, 2048) and torch.isfinite(feats).all() and (feats >= 0).all()
